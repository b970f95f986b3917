"""What every loss function returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LossOutput:
    """A loss as a sum, never a mean: the training loop divides by the global count.

    ``metrics`` hold (numerator, denominator) pairs so that averages over many
    micro-batches (and later, processes) are exact rather than means of means.
    """

    loss_sum: torch.Tensor  # scalar
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> float:
    return float((values.detach() * mask).sum())
