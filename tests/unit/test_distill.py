"""Distillation losses against hand-computed values, their zeros, and their gradients' direction."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.algorithms.distill import (
    distill_loss,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    sampled_reverse_kl,
)
from posttrain.algorithms.grpo import KL_ESTIMATORS

# one position, two tokens: p_s = [1/4, 3/4], p_t = [1/2, 1/2]
S = torch.tensor([[[0.0, math.log(3.0)]]])
T = torch.tensor([[[0.0, 0.0]]])
PS, PT = [0.25, 0.75], [0.5, 0.5]


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def test_reverse_and_forward_kl_match_hand_computed_values() -> None:
    assert reverse_kl(S, T).item() == pytest.approx(kl(PS, PT), abs=1e-6)  # 0.25 ln .5 + .75 ln 1.5 = 0.1308
    assert reverse_kl(S, T).item() == pytest.approx(0.130812, abs=1e-5)
    assert forward_kl(S, T).item() == pytest.approx(kl(PT, PS), abs=1e-6)  # 0.1438


def test_generalized_jsd_matches_gkd_definition_and_its_end_points() -> None:
    for beta in (0.1, 0.5, 0.9):
        m = [beta * t + (1 - beta) * s for s, t in zip(PS, PT)]
        expected = beta * kl(PT, m) + (1 - beta) * kl(PS, m)
        assert generalized_jsd(S, T, beta).item() == pytest.approx(expected, abs=1e-6)
    assert generalized_jsd(S, T, 0.5).item() == pytest.approx(0.0338223, abs=1e-6)
    assert generalized_jsd(S, T, 0.0).item() == pytest.approx(kl(PT, PS), abs=1e-6)
    assert generalized_jsd(S, T, 1.0).item() == pytest.approx(kl(PS, PT), abs=1e-6)
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(S, T, 1.5)


def test_every_divergence_is_zero_when_student_equals_teacher_and_positive_otherwise() -> None:
    logits = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0))
    other = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(1))
    for fn in (reverse_kl, forward_kl, lambda s, t: generalized_jsd(s, t, 0.3)):
        assert fn(logits, logits).abs().max().item() < 1e-6
        assert bool((fn(logits, other) > 0).all())
    lp = torch.randn(2, 5)
    surrogate, value = sampled_reverse_kl(lp, lp)
    assert value.abs().max().item() == 0.0 and surrogate.abs().max().item() == 0.0


def test_chunking_over_the_sequence_changes_nothing_and_a_padded_vocabulary_is_cut() -> None:
    s = torch.randn(2, 7, 9, generator=torch.Generator().manual_seed(2))
    t = torch.randn(2, 7, 9, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(reverse_kl(s, t, chunk=2), reverse_kl(s, t), atol=1e-6)
    assert torch.allclose(generalized_jsd(s, t, 0.4, chunk=1), generalized_jsd(s, t, 0.4), atol=1e-6)
    # a teacher with two extra (never sampled) embedding rows is compared on the shared ids
    padded = torch.cat([t, torch.full((2, 7, 2), -1e4)], dim=-1)
    assert torch.allclose(reverse_kl(s, padded), reverse_kl(s, t), atol=1e-5)


def test_distill_loss_sums_only_masked_tokens() -> None:
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    out = distill_loss(per_token, mask)
    assert out.loss_sum.item() == 9.0
    assert out.metrics["distill"] == (9.0, 3.0)
    weighted = distill_loss(per_token, mask, weights=torch.full((2, 3), 0.5))
    assert weighted.loss_sum.item() == 4.5


def test_a_step_on_the_reverse_kl_moves_the_student_towards_the_teacher() -> None:
    student = torch.randn(1, 4, 6, generator=torch.Generator().manual_seed(4)).requires_grad_()
    teacher = torch.randn(1, 4, 6, generator=torch.Generator().manual_seed(5))
    for fn in (reverse_kl, lambda s, t: generalized_jsd(s, t, 0.5)):
        before = fn(student, teacher).sum()
        (grad,) = torch.autograd.grad(before, student)
        after = fn(student - 0.5 * grad, teacher).sum()
        assert after.item() < before.item()
        gap = (student.log_softmax(-1) - teacher.log_softmax(-1)).abs().sum()
        moved = ((student - 0.5 * grad).log_softmax(-1) - teacher.log_softmax(-1)).abs().sum()
        assert moved.item() < gap.item()


def test_the_sampled_estimator_gradient_is_the_reverse_kl_gradient_in_expectation() -> None:
    """Sum over every token y of p_s(y) * grad[sg(log s(y) - log t(y)) log s(y)] = grad KL(s || t)."""
    z = torch.tensor([0.3, -1.0, 0.8, 0.1], requires_grad=True)
    t = torch.tensor([-0.2, 0.5, 0.0, 1.0]).log_softmax(-1)
    (exact,) = torch.autograd.grad(reverse_kl(z[None, None], t[None, None]).sum(), z)
    expected = torch.zeros(4)
    for y in range(4):
        lp = z.log_softmax(-1)
        surrogate, _ = sampled_reverse_kl(lp[y : y + 1], t[y : y + 1])
        (g,) = torch.autograd.grad(surrogate.sum(), z)
        expected += lp[y].exp().detach() * g
    assert torch.allclose(expected, exact, atol=1e-6)


def test_the_kd_term_moves_the_sampled_tokens_logprobs_towards_the_teachers() -> None:
    """KDRL's KD term (k2 of the sampled tokens' log-ratio): one step closes the gap, from either side."""
    logprobs = torch.tensor([-2.0, -0.5, -1.0], requires_grad=True)
    teacher = torch.tensor([-1.0, -1.5, -1.0])
    kd = KL_ESTIMATORS["k2"](logprobs, teacher).sum()
    (grad,) = torch.autograd.grad(kd, logprobs)
    stepped = logprobs.detach() - 0.1 * grad
    assert stepped[0] > logprobs[0] and stepped[1] < logprobs[1]  # up towards -1.0, down towards -1.5
    assert stepped[2] == logprobs[2]  # already equal: no pull
    assert (stepped - teacher).abs().sum() < (logprobs.detach() - teacher).abs().sum()
