"""The one optimisation step every recipe shares.

SFT, GRPO (and later DPO) differ only in the ``loss_fn`` they pass: the loop owns
micro-batching, gradient accumulation, global normalisation, clipping and the
optimiser and scheduler steps. Normalising here, once, by the count of the whole
step is what keeps a loss from silently depending on how a batch was split
(torchtune #2307 is the classic bug of doing it per micro-batch).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR

from posttrain.algorithms.types import LossOutput
from posttrain.config import OptimConfig

Micro = TypeVar("Micro")


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, total_steps: int) -> tuple[Optimizer, LambdaLR]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay)
    return opt, LambdaLR(opt, lr_lambda(cfg, total_steps))


def lr_lambda(cfg: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at step s: linear warm-up, then the chosen decay."""

    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        span = max(1, total_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        if cfg.schedule == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape

    return factor


def optimizer_step(
    model: torch.nn.Module,
    optimizer: Optimizer,
    scheduler: LambdaLR,
    micro_batches: Sequence[Micro],
    loss_fn: Callable[[Micro], LossOutput],
    count: float,
    grad_clip: float,
) -> dict[str, float]:
    """One optimiser step over ``micro_batches``; ``count`` is the step's global normaliser.

    Returns the step's loss (sum over micro-batches / count), grad norm, lr, seconds,
    and every loss metric averaged exactly over the step.
    """
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    count = max(count, 1e-8)
    loss_total = 0.0
    sums: dict[str, list[float]] = {}
    for mb in micro_batches:
        out = loss_fn(mb)
        (out.loss_sum / count).backward()
        loss_total += float(out.loss_sum.detach())
        for key, (num, den) in out.metrics.items():
            acc = sums.setdefault(key, [0.0, 0.0])
            acc[0] += num
            acc[1] += den
    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = grad_clip if grad_clip > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    stats = {"loss": loss_total / count, "grad_norm": grad_norm, "lr": lr}
    stats.update({k: num / den for k, (num, den) in sums.items() if den > 0})
    stats["step_seconds"] = time.perf_counter() - start
    return stats
