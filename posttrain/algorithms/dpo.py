"""Direct preference optimisation and its variants, as pure functions over pair log-probs.

Every loss reads one record, ``PairLogps``: per pair, the summed log-probability of
the chosen and the rejected response under the policy (and the reference), and the
responses' lengths in tokens. With the log-ratio margin

    m = (log pi(y_c|x) - log pi_ref(y_c|x)) - (log pi(y_r|x) - log pi_ref(y_r|x)),  h = beta * m

the losses per pair are:

- ``sigmoid``, DPO (Rafailov et al. 2023, "Direct Preference Optimization",
  arXiv 2305.18290): -log sigmoid(h). At pi = pi_ref, h = 0 and the loss is ln 2.
- ``cdpo``, conservative DPO / label smoothing (Mitchell 2023, "A note on DPO with
  noisy preferences"): -(1 - eps) log sigmoid(h) - eps log sigmoid(-h), eps the
  assumed share of flipped labels (``dpo.label_smoothing``).
- ``ipo``, IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand
  Learning from Human Preferences", arXiv 2310.12036): (m - 1 / (2 beta))^2. We use
  log-ratios *averaged per token* (each response's summed log-ratio divided by its
  length), as TRL and the IPO authors' released code do; with sums the target
  margin 1/(2 beta) would mean different things for short and long responses.
- ``simpo``, SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a
  Reference-Free Reward", arXiv 2405.14734): reference-free and length-normalised,
  -log sigmoid(beta/|y_c| log pi(y_c|x) - beta/|y_r| log pi(y_r|x) - gamma).
- ``rpo``, DPO + NLL (Pang et al. 2024, "Iterative Reasoning Preference
  Optimization", arXiv 2404.19733): the DPO loss plus alpha times the chosen
  response's per-token NLL, -alpha log pi(y_c|x) / |y_c| (``dpo.nll_coef``). The
  paper divides the NLL by the prompt's and response's length together; we divide by
  the response's alone, so the coefficient does not drift with prompt length.

Each loss returns a per-pair tensor; ``preference_loss`` weights and sums it into a
``LossOutput``. The training loop divides by the global sum of pair weights (the
number of pairs, when every pair weighs 1), so a step's loss never depends on how
its pairs fell into micro-batches. GroupDPO gives each of a prompt's k pairs the
weight 1/k (``posttrain.algorithms.pairs``).

Implied rewards, for the metrics: beta * (log pi - log pi_ref) of each response
(summed log-probs) for the reference-based losses, beta * log pi / |y| for SimPO.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from posttrain.algorithms.types import LossOutput
from posttrain.config import DPOConfig


@dataclass
class PairLogps:
    """Per-pair sequence log-probabilities, all shape (P,)."""

    chosen: torch.Tensor  # sum of log pi over the chosen response's tokens
    rejected: torch.Tensor
    chosen_len: torch.Tensor  # response tokens
    rejected_len: torch.Tensor
    ref_chosen: torch.Tensor | None = None  # the same under the reference; None for reference-free losses
    ref_rejected: torch.Tensor | None = None


def _ref(p: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
    if p.ref_chosen is None or p.ref_rejected is None:
        raise ValueError("this loss needs reference log-probabilities")
    return p.ref_chosen, p.ref_rejected


def log_ratio_margin(p: PairLogps) -> torch.Tensor:
    """m = (log pi - log pi_ref)(chosen) - (log pi - log pi_ref)(rejected), summed over tokens. (P,)"""
    ref_c, ref_r = _ref(p)
    return (p.chosen - ref_c) - (p.rejected - ref_r)


def sigmoid_loss(p: PairLogps, cfg: DPOConfig) -> torch.Tensor:
    return -F.logsigmoid(cfg.beta * log_ratio_margin(p))


def cdpo_loss(p: PairLogps, cfg: DPOConfig) -> torch.Tensor:
    h = cfg.beta * log_ratio_margin(p)
    eps = cfg.label_smoothing
    return -(1 - eps) * F.logsigmoid(h) - eps * F.logsigmoid(-h)


def ipo_loss(p: PairLogps, cfg: DPOConfig) -> torch.Tensor:
    ref_c, ref_r = _ref(p)
    lc, lr = p.chosen_len.clamp(min=1), p.rejected_len.clamp(min=1)
    margin = (p.chosen - ref_c) / lc - (p.rejected - ref_r) / lr
    return (margin - 1 / (2 * cfg.beta)) ** 2


def simpo_loss(p: PairLogps, cfg: DPOConfig) -> torch.Tensor:
    lc, lr = p.chosen_len.clamp(min=1), p.rejected_len.clamp(min=1)
    return -F.logsigmoid(cfg.beta * p.chosen / lc - cfg.beta * p.rejected / lr - cfg.simpo_gamma)


def rpo_loss(p: PairLogps, cfg: DPOConfig) -> torch.Tensor:
    return sigmoid_loss(p, cfg) - cfg.nll_coef * p.chosen / p.chosen_len.clamp(min=1)


PairLoss = Callable[[PairLogps, DPOConfig], torch.Tensor]

LOSSES: dict[str, PairLoss] = {
    "sigmoid": sigmoid_loss,
    "cdpo": cdpo_loss,
    "ipo": ipo_loss,
    "simpo": simpo_loss,
    "rpo": rpo_loss,
}

# Losses that never read the reference: the recipes skip loading and running it.
REFERENCE_FREE = frozenset({"simpo"})


def implied_rewards(p: PairLogps, cfg: DPOConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) rewards (P,) the loss implicitly assigns, for the metrics."""
    if cfg.loss in REFERENCE_FREE:
        return cfg.beta * p.chosen / p.chosen_len.clamp(min=1), cfg.beta * p.rejected / p.rejected_len.clamp(min=1)
    ref_c, ref_r = _ref(p)
    return cfg.beta * (p.chosen - ref_c), cfg.beta * (p.rejected - ref_r)


def preference_loss(p: PairLogps, weights: torch.Tensor, cfg: DPOConfig) -> LossOutput:
    """The weighted sum of ``LOSSES[cfg.loss]`` over pairs; ``weights`` (P,).

    Metrics are weighted means over pairs: ``reward_accuracy`` (chosen reward above
    rejected), ``reward_margin``, ``chosen_rewards``, ``rejected_rewards``,
    ``chosen_logps`` and ``rejected_logps`` (summed over each response's tokens).
    """
    per_pair = LOSSES[cfg.loss](p, cfg)
    with torch.no_grad():
        r_c, r_r = implied_rewards(p, cfg)
        w = weights.detach()
        n = float(w.sum())

        def mean(values: torch.Tensor) -> tuple[float, float]:
            return float((values.detach() * w).sum()), n

        metrics = {
            "reward_accuracy": mean((r_c > r_r).float()),
            "reward_margin": mean(r_c - r_r),
            "chosen_rewards": mean(r_c),
            "rejected_rewards": mean(r_r),
            "chosen_logps": mean(p.chosen),
            "rejected_logps": mean(p.rejected),
        }
    return LossOutput(loss_sum=(per_pair * weights).sum(), metrics=metrics)
