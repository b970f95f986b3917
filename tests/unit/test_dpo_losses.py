"""DPO-family and Bradley-Terry losses against values worked out by hand."""

from __future__ import annotations

import math
import typing
from pathlib import Path

import pytest
import torch

from posttrain.algorithms.dpo import LOSSES, REFERENCE_FREE, PairLogps, preference_loss
from posttrain.algorithms.reward_model import bradley_terry_loss
from posttrain.config import DPOConfig
from posttrain.data.pairs import collate_pairs
from posttrain.recipes.pairwise import dpo_loss_fn
from posttrain.train.reference import sequence_logps

LN2 = math.log(2.0)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def pairs(chosen, rejected, ref_chosen=None, ref_rejected=None, chosen_len=(1.0,), rejected_len=(1.0,)) -> PairLogps:
    return PairLogps(
        chosen=t(*chosen),
        rejected=t(*rejected),
        chosen_len=t(*chosen_len),
        rejected_len=t(*rejected_len),
        ref_chosen=None if ref_chosen is None else t(*ref_chosen),
        ref_rejected=None if ref_rejected is None else t(*ref_rejected),
    )


def per_pair(p: PairLogps, **cfg) -> list[float]:
    out = preference_loss(p, torch.ones_like(p.chosen), DPOConfig(**cfg))
    return [out.loss_sum.item()]


def test_every_configurable_loss_is_registered() -> None:
    names = typing.get_args(typing.get_type_hints(DPOConfig)["loss"])
    assert set(LOSSES) == set(names)
    assert set(LOSSES) >= REFERENCE_FREE


@pytest.mark.parametrize("loss", ["sigmoid", "cdpo"])
def test_dpo_is_ln2_when_policy_equals_reference(loss: str) -> None:
    """h = beta * 0 = 0, so -log sigmoid(0) = ln 2 for every pair, whatever the log-probs."""
    p = pairs((-3.0, -10.0, -0.5), (-4.0, -2.0, -7.0), (-3.0, -10.0, -0.5), (-4.0, -2.0, -7.0), (3, 5, 1), (2, 2, 4))
    out = preference_loss(p, torch.ones(3), DPOConfig(loss=loss, label_smoothing=0.2))  # type: ignore[arg-type]
    assert out.loss_sum.item() / 3 == pytest.approx(LN2)
    assert out.metrics["reward_margin"] == (0.0, 3.0)
    assert out.metrics["reward_accuracy"] == (0.0, 3.0)  # a tie is not a win


def test_dpo_gradient_raises_chosen_over_rejected() -> None:
    """d/dx of -log sigmoid(beta (x_c - x_r)) at h = 0 is -beta/2 for x_c and +beta/2 for x_r."""
    chosen, rejected = t(-5.0).requires_grad_(), t(-5.0).requires_grad_()
    p = PairLogps(chosen, rejected, t(3.0), t(3.0), t(-5.0), t(-5.0))
    preference_loss(p, t(1.0), DPOConfig(beta=0.1)).loss_sum.backward()
    assert chosen.grad is not None and rejected.grad is not None
    assert chosen.grad.item() == pytest.approx(-0.05)  # gradient descent raises log pi(chosen)
    assert rejected.grad.item() == pytest.approx(0.05)  # and lowers log pi(rejected)


def test_dpo_step_on_a_model_raises_the_chosen_log_ratio(tiny_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    prompt, chosen, rejected = [1, 20, 21], [30, 31, 2], [40, 41, 42, 2]
    sequences = [(prompt, chosen), (prompt, rejected)]
    ref = sequence_logps(model, sequences, 0, 2)
    batch = collate_pairs(sequences, [(0, 1, 1.0)], 0, ref)
    out = dpo_loss_fn(model, DPOConfig(beta=0.1))(batch)
    assert out.loss_sum.item() == pytest.approx(LN2, abs=1e-5)
    out.loss_sum.backward()
    with torch.no_grad():
        for param in model.parameters():
            param -= 1.0 * param.grad  # one plain gradient step
    after = sequence_logps(model, sequences, 0, 2)
    assert (after[0] - ref[0]) - (after[1] - ref[1]) > 0


def test_label_smoothing_by_hand() -> None:
    """m = (-1 - -2.5) - (-3 - -2.5) = 2, beta = 0.5 -> h = 1, eps = 0.1:
    0.9 * log(1 + e^-1) + 0.1 * log(1 + e^1) = 0.9 * 0.3132617 + 0.1 * 1.3132617 = 0.4132617."""
    p = pairs((-1.0,), (-3.0,), (-2.5,), (-2.5,))
    assert per_pair(p, loss="cdpo", beta=0.5, label_smoothing=0.1) == pytest.approx([0.4132617])
    # eps = 0 is plain DPO: log(1 + e^-1)
    assert per_pair(p, loss="cdpo", beta=0.5, label_smoothing=0.0) == pytest.approx([0.3132617])
    assert per_pair(p, loss="sigmoid", beta=0.5) == pytest.approx([0.3132617])


def test_ipo_by_hand() -> None:
    """Per-token log-ratios: chosen (-6 - -9) / 3 = 1, rejected (-8 - -4) / 4 = -1, margin 2.
    beta = 0.5: (2 - 1/(2*0.5))^2 = 1; beta = 1: (2 - 0.5)^2 = 2.25; beta = 0.25: (2 - 2)^2 = 0."""
    p = pairs((-6.0,), (-8.0,), (-9.0,), (-4.0,), (3.0,), (4.0,))
    assert per_pair(p, loss="ipo", beta=0.5) == pytest.approx([1.0])
    assert per_pair(p, loss="ipo", beta=1.0) == pytest.approx([2.25])
    assert per_pair(p, loss="ipo", beta=0.25) == pytest.approx([0.0], abs=1e-7)


def test_simpo_by_hand_and_reference_free() -> None:
    """chosen -6 over 3 tokens (-2 per token), rejected -12 over 4 (-3 per token), beta 2, gamma 1:
    -log sigmoid(2*-2 - 2*-3 - 1) = -log sigmoid(1) = 0.3132617. No reference is read."""
    p = pairs((-6.0,), (-12.0,), None, None, (3.0,), (4.0,))
    assert per_pair(p, loss="simpo", beta=2.0, simpo_gamma=1.0) == pytest.approx([0.3132617])
    out = preference_loss(p, t(1.0), DPOConfig(loss="simpo", beta=2.0, simpo_gamma=1.0))
    assert out.metrics["chosen_rewards"][0] == pytest.approx(-4.0)  # beta * mean token logprob
    assert out.metrics["reward_accuracy"] == (1.0, 1.0)


def test_rpo_adds_the_chosen_per_token_nll() -> None:
    """policy = reference: ln 2 from DPO, plus alpha * 6/3 = 0.5 * 2 = 1 of NLL."""
    p = pairs((-6.0,), (-1.0,), (-6.0,), (-1.0,), (3.0,), (1.0,))
    assert per_pair(p, loss="rpo", beta=0.1, nll_coef=0.5) == pytest.approx([LN2 + 1.0])


def test_reference_losses_refuse_missing_reference() -> None:
    with pytest.raises(ValueError, match="reference"):
        preference_loss(pairs((-1.0,), (-2.0,)), t(1.0), DPOConfig())


def test_weights_and_metrics() -> None:
    """Two pairs weighted 0.25 and 0.75: h = 0.1 * 10 = 1 and h = 0.1 * -10 = -1.
    loss sum = 0.25 log(1 + e^-1) + 0.75 log(1 + e) = 0.0783154 + 0.9849463; accuracy 0.25 of 1."""
    p = pairs((0.0, 0.0), (-10.0, 10.0), (0.0, 0.0), (0.0, 0.0), (1, 1), (1, 1))
    out = preference_loss(p, t(0.25, 0.75), DPOConfig(beta=0.1))
    assert out.loss_sum.item() == pytest.approx(0.25 * 0.3132617 + 0.75 * 1.3132617)
    assert out.metrics["reward_accuracy"] == pytest.approx((0.25, 1.0))
    assert out.metrics["reward_margin"] == pytest.approx((0.25 * 1.0 + 0.75 * -1.0, 1.0))
    assert out.metrics["chosen_logps"] == pytest.approx((0.0, 1.0))
    assert out.metrics["rejected_logps"] == pytest.approx((0.25 * -10 + 0.75 * 10, 1.0))


def test_bradley_terry_by_hand() -> None:
    """Rewards (2, 0) and (0, 1): -log sigmoid(2) - log sigmoid(-1) = 0.1269280 + 1.3132617; accuracy 1/2."""
    chosen, rejected = t(2.0, 0.0).requires_grad_(), t(0.0, 1.0)
    out = bradley_terry_loss(chosen, rejected, t(1.0, 1.0))
    assert out.loss_sum.item() == pytest.approx(0.1269280 + 1.3132617)
    assert out.metrics["accuracy"] == (1.0, 2.0)
    assert out.metrics["margin"] == pytest.approx((1.0, 2.0))
    out.loss_sum.backward()
    assert chosen.grad is not None and bool((chosen.grad < 0).all())  # descent raises the chosen reward
    equal = bradley_terry_loss(t(0.3), t(0.3), t(1.0))
    assert equal.loss_sum.item() == pytest.approx(LN2)
