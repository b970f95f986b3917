"""Supervised fine-tuning: next-token cross-entropy on completion tokens only.

Prompt tokens are context, not targets (their mask is 0). The loss is summed here
and divided by the number of completion tokens across the whole optimiser step
by the training loop, so long and short examples weigh each token equally
however they fall into micro-batches.
"""

from __future__ import annotations

import torch

from posttrain.algorithms.types import LossOutput


def sft_loss(logprobs: torch.Tensor, response_mask: torch.Tensor) -> LossOutput:
    """logprobs, response_mask: (B, T-1). Sum of -log p over completion tokens."""
    nll = -(logprobs * response_mask).sum()
    return LossOutput(loss_sum=nll, metrics={"nll": (float(nll.detach()), float(response_mask.sum()))})
