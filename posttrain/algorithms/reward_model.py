"""The Bradley-Terry reward-model loss.

A scalar reward r(x, y) (a value head on a causal LM) is fit to preference pairs by
maximising the Bradley-Terry likelihood P(y_c > y_r | x) = sigmoid(r(x, y_c) - r(x, y_r))
(Bradley and Terry 1952; as used for RLHF reward models by Ouyang et al. 2022,
"Training language models to follow instructions with human feedback",
arXiv 2203.02155): loss per pair -log sigmoid(r_c - r_r). Returned as a weighted
sum; the loop divides by the number of pairs of the whole step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from posttrain.algorithms.types import LossOutput


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, weights: torch.Tensor) -> LossOutput:
    """chosen, rejected, weights: (P,) rewards of each pair's responses and the pair weights.

    Metrics are weighted means: ``accuracy`` (chosen scored above rejected), ``margin``
    and the mean ``chosen_reward`` and ``rejected_reward``.
    """
    margin = chosen - rejected
    w = weights.detach()
    n = float(w.sum())

    def mean(values: torch.Tensor) -> tuple[float, float]:
        return float((values.detach() * w).sum()), n

    metrics = {
        "accuracy": mean((margin > 0).float()),
        "margin": mean(margin),
        "chosen_reward": mean(chosen),
        "rejected_reward": mean(rejected),
    }
    return LossOutput(loss_sum=(-F.logsigmoid(margin) * weights).sum(), metrics=metrics)
