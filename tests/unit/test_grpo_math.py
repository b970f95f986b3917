"""GRPO pieces against hand-computed values and their defining invariants."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.algorithms.grpo import (
    KL_ESTIMATORS,
    LOSS_WEIGHTS,
    group_advantages,
    grpo_loss,
    uniform_groups,
)


def test_group_advantages_by_hand() -> None:
    """Group [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(1/3) = 0.57735.
    Centred: [0.5, -0.5, -0.5, 0.5]; normalised: +-0.5 / 0.57735 = +-0.866025."""
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    centred = group_advantages(r, std_normalize=False)
    assert torch.allclose(centred, torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]))
    normed = group_advantages(r, std_normalize=True)
    assert normed[0, 0].item() == pytest.approx(0.866025, abs=1e-5)
    assert normed[1].abs().max().item() == 0.0  # a uniform group has no signal, not NaN


def test_uniform_groups() -> None:
    r = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    assert uniform_groups(r).tolist() == [True, False, True]


def test_kl_estimators_by_hand() -> None:
    """logp = log 0.5, ref = log 0.25: log r = log 0.5 = -0.693147, r = 0.5.
    k1 = -log r = 0.693147; k2 = (log r)^2 / 2 = 0.240227; k3 = r - 1 - log r = 0.193147."""
    lp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert KL_ESTIMATORS["k1"](lp, ref).item() == pytest.approx(0.693147, abs=1e-6)
    assert KL_ESTIMATORS["k2"](lp, ref).item() == pytest.approx(0.240227, abs=1e-6)
    assert KL_ESTIMATORS["k3"](lp, ref).item() == pytest.approx(0.193147, abs=1e-6)
    for fn in KL_ESTIMATORS.values():
        assert fn(lp, lp).item() == 0.0


def test_ratio_one_and_kl_zero_when_policies_agree() -> None:
    torch.manual_seed(0)
    lp = torch.randn(3, 5).clamp(max=-0.1)
    mask = torch.ones(3, 5)
    adv = torch.tensor([[1.0], [-1.0], [0.5]]).expand(3, 5)
    out = grpo_loss(lp, lp.clone(), adv, mask, mask, 0.2, 0.28, ref_logprobs=lp.clone(), kl_coef=0.1)
    ratio_sum, n = out.metrics["ratio"]
    assert ratio_sum / n == pytest.approx(1.0)
    assert out.metrics["kl"][0] == 0.0
    assert out.metrics["clip_frac"][0] == 0.0
    assert out.metrics["logprob_gap"][0] == 0.0
    # with ratio 1 the surrogate is -A per token: sum = -(5 * 1 - 5 * 1 + 5 * 0.5)
    assert out.loss_sum.item() == pytest.approx(-2.5)


def test_clipped_surrogate_by_hand() -> None:
    """ratio 1.5, A = +1: min(1.5, clip(1.5, 0.8, 1.28) = 1.28) -> loss -1.28, clipped.
    ratio 1.5, A = -1: min(-1.5, -1.28) = -1.5 -> loss 1.5, not clipped (pessimistic bound).
    ratio 0.5, A = -1: min(-0.5, -0.8) = -0.8 -> loss 0.8, clipped.
    ratio 0.5, A = +1: min(0.5, 0.8) = 0.5 -> loss -0.5, not clipped."""
    old = torch.zeros(1, 4)
    lp = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]]))
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    mask = torch.ones(1, 4)
    out = grpo_loss(lp, old, adv, mask, mask, clip_low=0.2, clip_high=0.28)
    assert out.loss_sum.item() == pytest.approx(-1.28 + 1.5 + 0.8 - 0.5, abs=1e-6)
    gap, n = out.metrics["logprob_gap"]  # mean |log 1.5|, |log 1.5|, |log 0.5|, |log 0.5|
    assert gap / n == pytest.approx((2 * math.log(1.5) + 2 * math.log(2)) / 4, abs=1e-6)
    assert out.metrics["clip_frac"] == (2.0, 4.0)


def test_gradient_raises_positive_advantage_tokens() -> None:
    lp = torch.log(torch.tensor([[0.3, 0.3]])).requires_grad_()
    out = grpo_loss(lp, lp.detach(), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2), torch.ones(1, 2), 0.2, 0.2)
    out.loss_sum.backward()
    assert lp.grad is not None and lp.grad[0, 0] < 0 < lp.grad[0, 1]  # descent raises the first, lowers the second


def test_loss_weights_by_hand() -> None:
    """Lengths 2 and 4, max length 8.
    token_mean: weights = mask, count = 6 tokens.
    seq_mean: weights 1/2 and 1/4 per token, count = 2 sequences.
    constant (Dr. GRPO): weights = mask, count = 2 sequences * 8 = 16."""
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    w, c = LOSS_WEIGHTS["token_mean"](mask, 8)
    assert torch.equal(w, mask) and c == 6.0
    w, c = LOSS_WEIGHTS["seq_mean"](mask, 8)
    assert w[0, 0].item() == 0.5 and w[1, 0].item() == 0.25 and w[0, 3].item() == 0.0 and c == 2.0
    w, c = LOSS_WEIGHTS["constant"](mask, 8)
    assert torch.equal(w, mask) and c == 16.0


def test_fully_masked_row_does_not_count() -> None:
    mask = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    assert LOSS_WEIGHTS["seq_mean"](mask, 4)[1] == 1.0
    assert LOSS_WEIGHTS["constant"](mask, 4)[1] == 4.0
