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
from posttrain.data.tokenize import LengthCount, Limit, encode_demo, example_error, fit_demo
from posttrain.device import precision
from posttrain.errors import DataError
from posttrain.models.io import context_length
from posttrain.recipes.common import check_task_reads_path, train_examples_count
from posttrain.recipes.launch import open_training
from posttrain.seeds import derive_seed
from posttrain.tasks.base import Example
from posttrain.tasks.registry import make_task
from posttrain.train import distributed
from posttrain.train.checkpoint import load_trainer_state, save_checkpoint, save_final
from posttrain.train.loop import build_optimizer, optimizer_step
from posttrain.train.metrics import MetricsWriter, console, progress

Demo = tuple[list[int], list[int], list[float]]  # prompt ids, completion ids, a loss weight per completion token


def load_demonstrations(
    cfg: Config, tokenizer, max_len: int | None, context: int | None = None, count: LengthCount | None = None
) -> list[Demo]:
    """The encoded demonstrations SFT trains on, each within ``max_len`` as ``data.truncation`` says.

    ``max_len`` is the stage's (``train.max_seq_len`` capped by the model's ``context``);
    rows cut or dropped are counted in ``count`` for the summary line.
    """
    task = make_task(cfg.data, tokenizer)
    examples = task.examples("train", train_examples_count(cfg.data), cfg.seed)
    demos = [ex for ex in examples if ex.completion is not None]
    label = cfg.data.path or cfg.data.task
    if not demos:
        raise DataError(
            "no demonstrations to train on (rows need a completion or messages)", file=label, field="completion"
        )
    demos = with_replies(demos)
    limit = None if max_len is None else Limit.of(cfg.train.max_seq_len, max_len, context)
    count = count if count is not None else LengthCount()
    count.truncation, count.limit = cfg.data.truncation, limit
    encoded = []
    for ex in demos:
        whole = encode_demo(tokenizer, ex, None)  # every assistant turn, or the last
        fitted = fit_demo(ex, whole, limit, cfg.data.truncation, tokenizer.bos_token_id)
        count.add(whole, fitted)
        if fitted is not None:
            encoded.append(fitted)
    if not encoded:
        raise DataError(f"no demonstration left to train on: {count.summary('demonstrations')}", file=label,
                        field="data.truncation")  # fmt: skip
    return select_demonstrations(encoded, cfg.data, cfg.seed, label)


def has_reply(ex: Example) -> bool:
    """Whether a demonstration has a reply to learn: a non-blank completion, or an earlier trained assistant turn."""
    if ex.completion is not None and ex.completion.strip():
        return True
    if ex.train_prompt_replies and isinstance(ex.prompt, list):  # encode_demo trains turns after the first message
        return any(m["role"] == "assistant" and m["content"].strip() for m in ex.prompt[1:])
    return False


def with_replies(demos: list[Example]) -> list[Example]:
    """``demos`` without the rows whose reply is empty: they would train the end-of-sequence token alone.

    A few such rows in a file are dropped and counted; a file of nothing else is refused.
    """
    empty = [ex for ex in demos if not has_reply(ex)]
    if not empty:
        return demos
    first = empty[0].source or empty[0].id
    if len(empty) == len(demos):
        raise example_error(
            empty[0], "completion",
            f"every one of the {len(demos)} demonstrations has an empty reply (prompt and completion blank, or "
            "no assistant content): nothing to train on but the end-of-sequence token",
        )  # fmt: skip
    console.print(
        f"sft: dropped {len(empty)} of {len(demos)} demonstrations with an empty reply (first: {first}); "
        "they would train nothing but the end-of-sequence token",
        markup=False, highlight=False, soft_wrap=True,
    )  # fmt: skip
    return [ex for ex in demos if has_reply(ex)]


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
    check_task_reads_path(cfg.data)
    (cfg, out, ckpt, tokenizer, model, max_len), net = open_training(cfg, resume)
    distributed.check_divisible(cfg.train.batch_size, "train.batch_size")
    lengths_count = LengthCount()  # rows data.truncation cut or dropped, for the summary line
    data = load_demonstrations(cfg, tokenizer, max_len, context_length(model), lengths_count)
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
            logprobs, _ = token_logprobs(net, mb, chunk=cfg.train.logits_chunk)
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
            bar.update(task_id, advance=1, info=f"loss {stats['loss']:.4f}, lr {stats['lr']:.2e}")
            if cfg.train.save_every and (step + 1) % cfg.train.save_every == 0:
                save_checkpoint(
                    out / "checkpoints",
                    step + 1,
                    model,
                    tokenizer,
                    optimizer,
                    scheduler,
                    keep=cfg.train.keep_checkpoints,
                )
    writer.close()
    final = save_final(model, tokenizer, out / "final")
    if stats:
        dropped = lengths_count.summary("demonstrations")
        console.print(
            f"sft: {cfg.train.max_steps} steps, {len(data)} demonstrations{f' ({dropped})' if dropped else ''}, "
            f"final loss {stats['loss']:.4f} -> {final}"
        )
    return final
