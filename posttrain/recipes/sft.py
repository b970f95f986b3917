"""Supervised fine-tuning recipe: demonstrations in, a fine-tuned HF model out.

Reads top to bottom: load, encode every demonstration once (failing on the first
bad row with its file and line), then for each optimiser step take the next
``train.batch_size`` rows of a seeded per-epoch permutation, bucket them by
length into micro-batches, and step. The data position is a pure function of the
step number, so resume needs no sampler state and repeats or skips nothing.

Under torchrun each rank takes every world-th row of the step's batch (sorted by
length first, so ranks get similar numbers of tokens): the global batch, and so
every step, is the one-process run's.
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path

from posttrain.algorithms.logprobs import token_logprobs
from posttrain.algorithms.sft import sft_loss
from posttrain.algorithms.types import LossOutput
from posttrain.config import Config, DataConfig, TrainConfig
from posttrain.data.batch import TokenBatch, collate, length_buckets, packed_micro_batches, per_token
from posttrain.data.order import step_rows
from posttrain.data.tokenize import encode_demo
from posttrain.device import precision
from posttrain.errors import DataError
from posttrain.recipes.common import train_examples_count
from posttrain.recipes.launch import open_training
from posttrain.seeds import derive_seed
from posttrain.tasks.registry import make_task
from posttrain.train import distributed
from posttrain.train.checkpoint import load_trainer_state, save_checkpoint, save_final
from posttrain.train.loop import build_optimizer, optimizer_step
from posttrain.train.metrics import MetricsWriter, console, progress

Demo = tuple[list[int], list[int], list[float]]  # prompt ids, completion ids, a loss weight per completion token


def load_demonstrations(cfg: Config, tokenizer, max_len: int | None) -> list[Demo]:
    task = make_task(cfg.data, tokenizer)
    examples = task.examples("train", train_examples_count(cfg.data), cfg.seed)
    demos = [ex for ex in examples if ex.completion is not None]
    if not demos:
        raise DataError(
            "no demonstrations to train on (rows need a completion or messages)",
            file=cfg.data.path or cfg.data.task,
            field="completion",
        )
    encoded = [encode_demo(tokenizer, ex, max_len) for ex in demos]  # every assistant turn, or the last
    return select_demonstrations(encoded, cfg.data, cfg.seed, cfg.data.path or cfg.data.task)


def select_demonstrations(pairs: list[Demo], data: DataConfig, seed: int, label: str) -> list[Demo]:
    """The demonstrations SFT trains on: a completion-length filter, then a seeded ``train_fraction`` subset.

    Lengths count completion tokens including the end-of-sequence token. The
    subset keeps file order, so 2 epochs on half the data and 1 epoch on all of
    it see the same kind of rows.
    """
    lo, hi = data.min_demo_tokens, data.max_demo_tokens
    kept = [p for p in pairs if len(p[1]) >= lo and (hi == 0 or len(p[1]) <= hi)]
    if not kept:
        raise DataError(
            f"none of {len(pairs)} demonstrations has a completion of {lo} to {hi or 'any number of'} tokens",
            file=label,
            field="data.max_demo_tokens" if hi else "data.min_demo_tokens",
        )
    if data.train_fraction < 1:
        m = max(1, round(len(kept) * data.train_fraction))
        chosen = sorted(random.Random(derive_seed(seed, 5)).sample(range(len(kept)), m))
        kept = [kept[i] for i in chosen]
    return kept


def demo_batch(data: list[Demo], rows: list[int], pad: int) -> TokenBatch:
    """The rows as one padded batch whose response mask carries each token's loss weight (0 between turns)."""
    prompts, completions = [data[i][0] for i in rows], [data[i][1] for i in rows]
    batch = collate(prompts, completions, pad)
    weights = per_token([data[i][2] for i in rows], [len(p) for p in prompts], batch.response_mask.shape[1])
    batch.response_mask = batch.response_mask * weights
    return batch


def sft_steps(train: TrainConfig, steps_per_epoch: int) -> int:
    """Optimiser steps: ``train.epochs`` passes over the data when set, else ``train.max_steps``."""
    return max(1, round(train.epochs * steps_per_epoch)) if train.epochs > 0 else train.max_steps


def train_sft(cfg: Config, resume: bool = False) -> Path:
    """Train, write ``output_dir/{metrics.jsonl, checkpoints/, final/}``; return ``final``."""
    (cfg, out, ckpt, tokenizer, model, max_len), net = open_training(cfg, resume)
    distributed.check_divisible(cfg.train.batch_size, "train.batch_size")
    data = load_demonstrations(cfg, tokenizer, max_len)
    lengths = [len(p) + len(c) for p, c, _ in data]
    bs, mbs = cfg.train.batch_size, cfg.train.micro_batch_size
    steps_per_epoch = len(data) // bs
    if steps_per_epoch == 0:
        raise DataError(
            f"only {len(data)} demonstrations, fewer than one batch of {bs}",
            file=cfg.data.path or cfg.data.task,
            field="train.batch_size",
        )
    # train.epochs fixes the number of steps only now that the data size is known
    steps = sft_steps(cfg.train, steps_per_epoch)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=steps))
    optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.train.max_steps)
    start = load_trainer_state(ckpt, optimizer, scheduler, model)["step"] if ckpt else 0
    writer = MetricsWriter(out / "metrics.jsonl", resume_step=start if ckpt else None)
    pad = int(tokenizer.pad_token_id)  # type: ignore[arg-type]

    def loss_fn(mb: TokenBatch) -> LossOutput:
        mb = mb.to(model.device)
        with precision(model.device, cfg.train.mixed_precision):
            logprobs, _ = token_logprobs(net, mb)
        return sft_loss(logprobs, mb.response_mask)

    stats: dict[str, float] = {}
    with progress() as bar:
        task_id = bar.add_task("sft", total=cfg.train.max_steps, completed=start, info="")
        for step in range(start, cfg.train.max_steps):
            epoch, rows = step_rows(len(data), bs, cfg.seed, step)
            if distributed.active():
                rows = distributed.shard(sorted(rows, key=lambda i: lengths[i]))
            if cfg.train.packing:  # the step's rows end to end instead of padded
                micro = packed_micro_batches(demo_batch(data, rows, pad), mbs)
            else:
                micro = [demo_batch(data, b, pad) for b in length_buckets(lengths, rows, mbs)]
            count = float(sum(mb.response_mask.sum() for mb in micro))
            t0 = time.perf_counter()
            stats = optimizer_step(net, optimizer, scheduler, micro, loss_fn, count, cfg.train.grad_clip)
            seconds = time.perf_counter() - t0
            tokens = int(distributed.all_sum([sum(mb.num_tokens for mb in micro)])[0])
            writer.write(
                {
                    "stage": "sft",
                    "step": step + 1,
                    "epoch": epoch,
                    "loss": stats["loss"],
                    "lr": stats["lr"],
                    "grad_norm": stats["grad_norm"],
                    "tokens": tokens,
                    "tokens_per_s": tokens / seconds,
                }
            )
            bar.update(task_id, advance=1, info=f"loss {stats['loss']:.4f}")
            if cfg.train.save_every and (step + 1) % cfg.train.save_every == 0:
                save_checkpoint(out / "checkpoints", step + 1, model, tokenizer, optimizer, scheduler)
    writer.close()
    final = save_final(model, tokenizer, out / "final")
    if stats:
        console.print(
            f"sft: {cfg.train.max_steps} steps, {len(data)} demonstrations, final loss {stats['loss']:.4f} -> {final}"
        )
    return final
