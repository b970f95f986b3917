"""Distributed scenarios for tests/integration/test_distributed.py, run under torchrun.

    python -m torch.distributed.run --nproc_per_node=2 -m tests.dist_run OUT TINY PREFS SCENARIO ...

All scenarios share one launch (one process group): starting two processes that
import torch and transformers costs more than a tiny scenario itself. Each writes
under OUT/<scenario>; the test compares those files with one-process runs.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import posttrain.recipes.dpo as dpo_recipe
import posttrain.recipes.grpo as grpo_recipe
import posttrain.recipes.sft as sft_recipe
from posttrain.algorithms.grpo import grpo_loss
from posttrain.algorithms.logprobs import token_logprobs
from posttrain.algorithms.types import LossOutput
from posttrain.config import Config, DistConfig, OptimConfig, load_config
from posttrain.data.batch import TokenBatch, collate
from posttrain.models.io import load_model, load_tokenizer
from posttrain.train import distributed
from posttrain.train.checkpoint import save_final
from posttrain.train.loop import build_optimizer, optimizer_step
from tests.conftest import FAST

# SFT settings every SFT scenario and its one-process reference share: a warm-up and a
# cosine decay make the resumed run's scheduler state matter.
SFT = ("train.max_steps=4", "train.save_every=2", "optim.schedule=cosine", "optim.warmup_steps=1")
# GRPO settings of the GRPO scenarios and their one-process reference: the untrained model never
# answers right, but penalising truncation gives groups a spread of rewards, so every iteration updates
GRPO = ("train.max_steps=2", "grpo.overlong=penalty", "grpo.overlong_reward=-1.0", "grpo.drop_uniform_groups=false",
        "optim.lr=1e-3")  # fmt: skip
# a reward that ranks nearly every sample (-len), so every prompt of the online DPO scenario yields a pair;
# each rank's reward workers import it by name
SHORTER = "reward.components=[{kind: python, function: tests.rewards:shorter_is_better}]"


def config(out: Path, tiny: str, name: str, *extra: str) -> Config:
    return load_config(None, [*FAST, "threads=1", f"output_dir={out / name}", f"model.path={tiny}", *extra])


class Crash(Exception):
    pass


def crash_after(module: Any, calls: int) -> Callable[[], None]:
    """Make ``module.optimizer_step`` raise at call ``calls`` on every rank; return the undo."""
    real, count = module.optimizer_step, [0]

    def step(*args: Any, **kwargs: Any) -> dict[str, float]:
        if count[0] == calls:
            raise Crash
        count[0] += 1
        return real(*args, **kwargs)

    module.optimizer_step = step
    return lambda: setattr(module, "optimizer_step", real)


def sft_resumed(out: Path, tiny: str, name: str, *dist: str) -> None:
    """Killed during step 4 (last checkpoint: step 2), then resumed to the end."""
    cfg = config(out, tiny, name, *SFT, *dist)
    undo = crash_after(sft_recipe, 3)
    with contextlib.suppress(Crash):
        sft_recipe.train_sft(cfg)
    undo()
    sft_recipe.train_sft(cfg, resume=True)


def fixed_rollouts(n: int = 8, seed: int = 0) -> TokenBatch:
    """GRPO rollouts of random tokens, with old logprobs, advantages and weights, the same everywhere."""
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(10, 60, (int(torch.randint(2, 5, (1,), generator=gen)),), generator=gen) for _ in range(n)]
    answers = [torch.randint(10, 60, (int(torch.randint(1, 7, (1,), generator=gen)),), generator=gen) for _ in range(n)]
    batch = collate([p.tolist() for p in prompts], [a.tolist() for a in answers], 0)
    shape = batch.response_mask.shape
    batch.extra = {
        "old_logprobs": -4.0 + 0.3 * torch.randn(shape, generator=gen),
        "advantages": torch.randn(n, generator=gen)[:, None].expand(shape).contiguous(),
    }
    return batch


def grpo_fixed_loss(net: torch.nn.Module) -> Callable[[TokenBatch], LossOutput]:
    def loss_fn(mb: TokenBatch) -> LossOutput:
        logprobs, _ = token_logprobs(net, mb)
        x = mb.extra
        return grpo_loss(logprobs, x["old_logprobs"], x["advantages"], mb.response_mask, mb.response_mask, 0.2, 0.28)

    return loss_fn


# rows of the fixed rollouts each rank holds in each of two steps: fewer on rank 1, then none
UNEVEN = [([0, 1, 2, 3, 4, 5], [6, 7]), ([0, 1, 2, 3, 4, 5, 6, 7], [])]
UNEVEN_OPTIM = OptimConfig(lr=1e-2)


def uneven(out: Path, tiny: str, strategy: str) -> None:
    """Two optimiser steps over fixed rollouts split unevenly; the weights go to OUT/uneven_<strategy>."""
    model = load_model(tiny, device="cpu")
    net = distributed.wrap(model, DistConfig(strategy=strategy))  # type: ignore[arg-type]
    optimizer, scheduler = build_optimizer(model, UNEVEN_OPTIM, 2)
    batch, loss_fn = fixed_rollouts(), grpo_fixed_loss(net)
    losses = []
    for split in UNEVEN:
        rows = split[distributed.rank()]
        micro = [batch.select(rows[i : i + 2]) for i in range(0, len(rows), 2)]
        count = float(batch.response_mask[rows].sum())
        losses.append(optimizer_step(net, optimizer, scheduler, micro, loss_fn, count, 1.0)["loss"])
    final = save_final(model, load_tokenizer(tiny), out / f"uneven_{strategy}")
    if distributed.is_main():
        torch.save(losses, final / "losses.pt")


def main(out: Path, tiny: str, prefs: str, scenarios: list[str]) -> None:
    torch.set_num_threads(1)
    distributed.init(DistConfig(backend="gloo"), "cpu")
    for name in scenarios:
        if name == "sft_ddp":
            sft_recipe.train_sft(config(out, tiny, name, *SFT))
        elif name == "sft_fsdp":
            sft_recipe.train_sft(config(out, tiny, name, *SFT, "dist.strategy=fsdp", "dist.checkpoint=sharded"))
        elif name == "resume_gathered":
            sft_resumed(out, tiny, name)
        elif name == "resume_sharded":
            sft_resumed(out, tiny, name, "dist.strategy=fsdp", "dist.checkpoint=sharded")
        elif name == "dpo_ddp":
            dpo_recipe.train_dpo(config(out, tiny, name, f"data.path={prefs}", "train.max_steps=3", "optim.lr=3e-3"))
        elif name in ("grpo_ddp", "grpo_fsdp"):
            strategy = name.split("_")[1]
            grpo_recipe.train_grpo(config(out, tiny, name, *GRPO, f"dist.strategy={strategy}"))
        elif name == "online_ddp":
            online = (
                "dpo.mode=online",
                "rollout.prompts_per_step=4",
                "rollout.samples_per_prompt=4",
                "dpo.pairs=best_worst",
            )
            dpo_recipe.train_dpo(config(out, tiny, name, "train.max_steps=2", *online, SHORTER))
        elif name.startswith("uneven_"):
            uneven(out, tiny, name.split("_")[1])
        else:
            raise SystemExit(f"unknown scenario {name}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:])
