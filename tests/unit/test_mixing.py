"""SFT-RL mixing rules: schedules, CHORD's phi, LUFFY's shaping and mixed groups, Prefix-RFT's prefixes."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.algorithms.advantages import ADVANTAGES
from posttrain.algorithms.mixing import (
    coef_at,
    demo_completion,
    insert_demonstrations,
    prefix_length,
    sft_token_loss,
    shaped_off_policy_loss,
)
from posttrain.records import Completion, ScoredGroups, ScoreReport


def test_coefficient_schedules() -> None:
    assert [coef_at("constant", 0.3, 0.0, it, 5) for it in range(5)] == [0.3] * 5
    assert [coef_at("linear", 1.0, 0.0, it, 5) for it in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert [coef_at("linear", 0.1, 0.5, it, 3) for it in range(3)] == pytest.approx([0.1, 0.3, 0.5])
    assert coef_at("linear", 0.8, 0.2, 0, 1) == 0.8  # a one-iteration run stays at the start
    with pytest.raises(ValueError, match="cosine"):
        coef_at("cosine", 1.0, 0.0, 0, 3)


def test_chord_phi_weights_each_token_by_p_times_one_minus_p() -> None:
    p = torch.tensor([0.5, 0.9, 0.01])
    lp = p.log().requires_grad_()
    plain = sft_token_loss(lp, phi=False)
    weighted = sft_token_loss(lp, phi=True)
    assert torch.allclose(plain, -p.log())
    assert torch.allclose(weighted, p * (1 - p) * -p.log())
    (grad,) = torch.autograd.grad(weighted.sum(), lp)
    assert torch.allclose(grad, -(p * (1 - p)))  # phi is a weight: no gradient through it


def test_luffy_shaping_value_and_gradient() -> None:
    gamma, A = 0.1, torch.tensor([2.0, -1.0])
    p = torch.tensor([0.3, 0.05])
    lp = p.log().requires_grad_()
    out = shaped_off_policy_loss(lp, A, gamma)
    assert torch.allclose(out, -(p / (p + gamma)) * A)
    (grad,) = torch.autograd.grad(out.sum(), lp)
    # d/dlogp of -A p / (p + gamma) = -A gamma p / (p + gamma)^2: large for low-probability expert tokens
    assert torch.allclose(grad, -A * gamma * p / (p + gamma) ** 2)


def test_prefix_length() -> None:
    assert prefix_length(10, 0.5) == 5
    assert prefix_length(3, 0.99) == 2  # always leaves a token to sample
    assert prefix_length(1, 0.5) == 0


def _groups(rewards: list[list[float]]) -> ScoredGroups:
    N, G = len(rewards), len(rewards[0])
    cs = [Completion([1, 2], [3, 4], [-0.5, -0.5], "stop", "x") for _ in range(N * G)]
    return ScoredGroups([None] * N, cs, torch.tensor(rewards), ScoreReport([0.0] * (N * G)), 0, 0.0)


def test_a_demonstration_inserted_into_a_group_gets_the_group_rule_advantage() -> None:
    groups = _groups([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]])
    demo = demo_completion([1, 2], [5, 6, 2], "5 6", 0)
    mixed, off = insert_demonstrations(groups, [demo, None], [1.0, None])
    assert off.tolist() == [[False, False, False, True], [False] * 4]
    assert mixed.completions[3] is demo and mixed.completions[3].logprobs == [0.0, 0.0, 0.0]
    assert groups.scores[0, 3] == 0.0  # the input record is not changed
    adv = ADVANTAGES["grpo"](mixed.scores)
    # group 0 became [0, 0, 0, 1]: mean 1/4, unbiased std sqrt((3 (1/4)^2 + (3/4)^2) / 3) = 1/2
    assert adv[0, 3].item() == pytest.approx((1 - 0.25) / 0.5, abs=1e-4)
    assert adv[0, 0].item() == pytest.approx(-0.25 / 0.5, abs=1e-4)
    assert torch.allclose(adv[1], ADVANTAGES["grpo"](groups.scores)[1])  # no demo: unchanged
    # a demonstration the reward could not score is missing (NaN), as a failed sample is
    mixed2, _ = insert_demonstrations(groups, [demo, None], [None, None])
    assert math.isnan(mixed2.scores[0, 3].item())
