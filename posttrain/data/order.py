"""The order SFT and the pair recipes read their rows in: a seeded permutation per epoch.

The data position is a pure function of the step, so resume from a checkpoint
repeats and skips nothing and needs no sampler state.
"""

from __future__ import annotations

import torch

from posttrain.seeds import derive_seed


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    gen = torch.Generator().manual_seed(derive_seed(seed, epoch, 1))
    return torch.randperm(n, generator=gen).tolist()


def step_rows(n: int, batch_size: int, seed: int, step: int) -> tuple[int, list[int]]:
    """(epoch, row indices) of optimiser step ``step`` over ``n`` rows, ``batch_size`` rows a step."""
    epoch, k = divmod(step, n // batch_size)
    return epoch, epoch_order(n, seed, epoch)[k * batch_size : (k + 1) * batch_size]
