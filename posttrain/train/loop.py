"""The one optimisation step every recipe shares.

SFT, GRPO (and later DPO) differ only in the ``loss_fn`` they pass: the loop owns
micro-batching, gradient accumulation, global normalisation, clipping and the
optimiser and scheduler steps. Normalising here, once, by the count of the whole
step is what keeps a loss from silently depending on how a batch was split
(torchtune #2307 is the classic bug of doing it per micro-batch).

Under torchrun the normaliser, the reported loss and the metric sums are summed
over ranks, so a step of N processes equals the step of one process over the same
global batch; see ``optimizer_step``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR

from posttrain.algorithms.types import LossOutput
from posttrain.config import OptimConfig
from posttrain.errors import NonFiniteStepError
from posttrain.train import distributed

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

    Under torchrun ``model`` is the wrapper the forwards go through (``distributed.wrap``),
    and ``micro_batches`` and ``count`` are this rank's: the normaliser becomes the sum
    over ranks, and since DDP and FSDP average gradients over ranks the backward is
    scaled by the world size, so the gradient is that of (global sum) / (global count).
    Ranks may hold different numbers of micro-batches (GRPO drops groups; a rank may
    hold none), but gradient synchronisation needs every rank to run the same number
    of forward/backward passes: the short ranks add passes of zero weight.
    """
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    world = distributed.world()
    passes = len(micro_batches)
    if world > 1:
        count = distributed.all_sum([count])[0]
        passes = int(distributed.all_max(passes))
    count = max(count, 1e-8)
    loss_total = 0.0
    sums: dict[str, list[float]] = {}
    for i in range(passes):
        with _grad_sync(model, last=i == passes - 1):
            if i >= len(micro_batches):
                _zero_pass(model, micro_batches, loss_fn)
                continue
            out = loss_fn(micro_batches[i])
            # world is 1 in one process, and a product by 1 is exact: the old step bit for bit
            (out.loss_sum * world / count).backward()
        loss_total += float(out.loss_sum.detach())
        for key, (num, den) in out.metrics.items():
            acc = sums.setdefault(key, [0.0, 0.0])
            acc[0] += num
            acc[1] += den
    if world > 1:
        loss_total, sums = _sum_over_ranks(loss_total, sums)
    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = grad_clip if grad_clip > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    grad_norm = float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    _refuse_non_finite(optimizer, scheduler, loss_total / count, grad_norm)
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    stats = {"loss": loss_total / count, "grad_norm": grad_norm, "lr": lr}
    stats.update({k: num / den for k, (num, den) in sums.items() if den > 0})
    stats["step_seconds"] = time.perf_counter() - start
    return stats


def _refuse_non_finite(optimizer: Optimizer, scheduler: LambdaLR, loss: float, grad_norm: float) -> None:
    """Stop before an inf or NaN loss or gradient reaches the weights (and from them every checkpoint).

    It only reads the two numbers the step computes anyway, so finite steps are unchanged
    bit for bit. Under torchrun every rank takes the same decision without a collective of
    its own: the loss is the sum over ranks of the gathered per-rank sums (the same floats,
    added in the same order), and the norm is that of gradients already reduced over ranks
    (DDP's all-reduce, or FSDP's norm made whole by ``full_tensor``), so a NaN on any rank
    is a NaN on all. The step number counts optimiser steps over the run, resumed ones
    included: the scheduler, restored from the checkpoint, has taken one per step.
    """
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    optimizer.zero_grad(set_to_none=True)  # the clipped non-finite gradients must not linger
    raise NonFiniteStepError(scheduler.last_epoch + 1, loss, grad_norm)


def _grad_sync(model: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager[Any]:
    """DDP all-reduces gradients only in the last backward of a step (forward included)."""
    if isinstance(model, DistributedDataParallel) and not last:
        return model.no_sync()
    return contextlib.nullcontext()


def _zero_pass(model: torch.nn.Module, micro_batches: Sequence[Micro], loss_fn: Callable[[Micro], LossOutput]) -> None:
    """A forward/backward that adds nothing to any gradient but takes part in their sync.

    It reuses one of this rank's micro-batches; a rank with none runs the model on a
    single two-token row (every module in the forward, as DDP and FSDP expect).
    """
    if micro_batches:
        (loss_fn(micro_batches[0]).loss_sum * 0.0).backward()
        return
    device = next(model.parameters()).device
    out = model(input_ids=torch.zeros((1, 2), dtype=torch.long, device=device))
    (out.logits.float().sum() * 0.0).backward()


def _sum_over_ranks(loss: float, sums: dict[str, list[float]]) -> tuple[float, dict[str, list[float]]]:
    """The step's loss numerator and metric sums over every rank (whose metric keys may differ)."""
    total, merged = 0.0, dict[str, list[float]]()
    for rank_loss, rank_sums in distributed.gather_objects((loss, sums)):
        total += rank_loss
        for key, (num, den) in rank_sums.items():
            acc = merged.setdefault(key, [0.0, 0.0])
            acc[0] += num
            acc[1] += den
    return total, merged
