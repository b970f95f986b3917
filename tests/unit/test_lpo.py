"""LPO's loss against hand-computed values, and real LPO steps moving a head toward the temperature that wins."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from posttrain.algorithms.lpo import ChoiceBatch, LPOBatch, choice_logprobs, lpo_batch_loss, lpo_loss
from posttrain.config import load_config
from posttrain.models.io import load_model, load_tokenizer
from posttrain.models.temperature_head import model_hidden_size, new_head
from posttrain.recipes.adaptive import lpo_step
from posttrain.records import SamplingParams, ScoredGroups, ScoreReport
from posttrain.rollout.torch_engine import TorchEngine
from posttrain.tasks.base import Example
from posttrain.train.loop import build_optimizer

LN2 = math.log(2.0)


def test_choice_logprobs_sum_the_picked_entries() -> None:
    """log_probs of 2 rows x 3 steps over K=2; row 0 picks (0, 1, -), row 1 picks (1, -, -).

    Row 0: log 0.5 + log 0.25 = -0.6931 - 1.3863 = -2.0794; row 1: log 0.9 = -0.1054.
    """
    probs = torch.tensor([[[0.5, 0.5], [0.75, 0.25], [0.1, 0.9]], [[0.1, 0.9], [0.5, 0.5], [0.5, 0.5]]])
    choices = torch.tensor([[0, 1, 1], [1, 0, 0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    got = choice_logprobs(probs.log(), choices, mask)
    assert torch.allclose(got, torch.tensor([math.log(0.5) + math.log(0.25), math.log(0.9)]))


def test_lpo_loss_by_hand() -> None:
    """The paper's Eq. (10), -log sigmoid(beta log P(tau_c) - beta log P(tau_r)), per pair.

    Pair 1: chosen log p = log 0.5, rejected log 0.25, beta 2: margin ln 2, loss
    -log sigmoid(2 ln 2) = log(1 + 1/4) = 0.22314. Pair 2: equal log-probs: loss ln 2.
    Weights (1, 0.5): the sum is 0.22314 + 0.5 ln 2 = 0.56972."""
    chosen = torch.tensor([math.log(0.5), math.log(0.3)])
    rejected = torch.tensor([math.log(0.25), math.log(0.3)])
    out = lpo_loss(chosen, rejected, torch.tensor([1.0, 0.5]), beta=2.0)
    assert math.isclose(float(out.loss_sum), math.log(1.25) + 0.5 * LN2, rel_tol=1e-6)
    num, den = out.metrics["choice_accuracy"]
    assert (num, den) == (1.0, 1.5)  # only the first pair has a positive margin


def test_lpo_with_a_reference_is_ln2_when_the_head_is_the_reference() -> None:
    chosen, rejected = torch.tensor([-3.0, -1.0]), torch.tensor([-0.5, -2.0])
    out = lpo_loss(chosen, rejected, torch.ones(2), beta=0.7, ref_chosen=chosen, ref_rejected=rejected)
    assert math.isclose(float(out.loss_sum), 2 * LN2, rel_tol=1e-6)


def batch(hidden: torch.Tensor, picks: list[list[int]]) -> ChoiceBatch:
    T = max(len(p) for p in picks)
    choices = torch.tensor([p + [0] * (T - len(p)) for p in picks])
    mask = torch.tensor([[1.0] * len(p) + [0.0] * (T - len(p)) for p in picks])
    return ChoiceBatch(hidden=hidden[:, :T], choices=choices, mask=mask)


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_uniform_head_gives_ln2_per_example_and_by_length_per_token(beta: float) -> None:
    """A fresh head is uniform over K = 4 temperatures: every pick has log p = -ln 4.

    Per example (one pick each): margin 0, loss ln 2. Per token, chosen 2 picks and
    rejected 3: margin = -2 ln 4 + 3 ln 4 = ln 4, loss = log(1 + 4^-beta).
    """
    head = new_head([0.0, 0.4, 0.8, 1.2], "token", 8)
    hidden = torch.randn(1, 3, 8)
    one = LPOBatch(batch(hidden, [[2]]), batch(hidden, [[0]]), torch.ones(1))
    assert math.isclose(float(lpo_batch_loss(head, one, beta).loss_sum.detach()), LN2, rel_tol=1e-6)
    uneven = LPOBatch(batch(hidden, [[1, 3]]), batch(hidden, [[0, 0, 2]]), torch.ones(1))
    expected = math.log(1 + 4.0**-beta)
    assert math.isclose(float(lpo_batch_loss(head, uneven, beta).loss_sum.detach()), expected, rel_tol=1e-6)


def test_lpo_steps_move_the_head_to_the_winning_temperature(tiny_dir: Path) -> None:
    """A hand-made reward: 1 for a response equal to the greedy one, else 0 (exactness).

    Samples at temperature 0 always win, hotter ones mostly lose; a few real LPO steps
    (the recipe's own step: best-vs-worst pairs, the frozen model's hidden states, AdamW
    on the head) raise the head's probability of temperature 0 on these prompts.
    """
    model, tok = load_model(tiny_dir).eval(), load_tokenizer(tiny_dir)
    model.requires_grad_(False)
    cfg = load_config(None, ["optim.lr=0.05", "train.max_steps=4", "rollout.samples_per_prompt=6"])
    head = new_head([0.0, 0.4, 0.8, 1.2], "example", model_hidden_size(model), width=8)
    engine = TorchEngine(model, tok, head=head)
    prompts = [tok(t)["input_ids"] for t in ["1+2=?\n", "7-3=?\n", "4+4-1=?\n"]]
    greedy = [c.completion_ids for c in engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=8))]
    optimizer, scheduler = build_optimizer(head, cfg.optim, 4)
    G = cfg.rollout.samples_per_prompt

    @torch.no_grad()
    def p_greedy() -> float:
        hidden = torch.stack(
            [model(torch.tensor([p]), output_hidden_states=True).hidden_states[-1][0, -1] for p in prompts]
        )
        return float(head.log_probs(hidden).exp()[:, 0].mean())

    before = p_greedy()
    for it in range(4):
        rows = [p for p in prompts for _ in range(G)]
        outs = engine.generate(rows, SamplingParams(max_new_tokens=8, seed=it, adaptive="sample"))
        scores = torch.tensor([float(c.completion_ids == greedy[i // G]) for i, c in enumerate(outs)]).view(3, G)
        examples = [Example(id=f"p{i}", prompt="") for i in range(3)]
        groups = ScoredGroups(examples, outs, scores, ScoreReport(scores.flatten().tolist()), 0, 0.0)
        record = lpo_step(cfg, it, head, model, engine.pad_id, optimizer, scheduler, groups)
        assert record["pairs"] > 0
    assert math.isclose(before, 0.25, rel_tol=1e-6)
    after = p_greedy()
    assert after > 0.5
