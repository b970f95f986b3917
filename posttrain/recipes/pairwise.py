"""Wiring shared by the recipes that train on preference pairs: offline DPO, the reward model, online DPO.

The data position is a pure function of the step (a seeded permutation per epoch,
as in SFT), so resume from a checkpoint repeats and skips nothing. Each optimiser
step takes ``train.batch_size`` pairs in micro-batches of ``train.micro_batch_size``
pairs; the loop divides the summed loss by the step's number of pairs. Under
torchrun each rank takes every world-th pair of the step (``net`` is the wrapper
the forwards go through), and the loop sums over ranks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from posttrain.algorithms.dpo import PairLogps, preference_loss
from posttrain.algorithms.logprobs import response_sums
from posttrain.algorithms.types import LossOutput
from posttrain.config import Config, DPOConfig
from posttrain.data.order import step_rows
from posttrain.data.pairs import EncodedPair, Layout, PairBatch, pair_micro_batches
from posttrain.data.tokenize import LengthCount, Limit
from posttrain.device import precision
from posttrain.errors import ConfigError, DataError
from posttrain.tasks.pools import is_pool_file, load_pool_pairs
from posttrain.tasks.preferences import SHAPE, distinct_pairs, encode_pairs, load_preferences
from posttrain.train import distributed
from posttrain.train.checkpoint import save_checkpoint
from posttrain.train.loop import optimizer_step
from posttrain.train.metrics import MetricsWriter, console, progress

PairLossFn = Callable[[PairBatch], LossOutput]


def dpo_loss_fn(
    model: PreTrainedModel,
    cfg: DPOConfig,
    mixed_precision: str = "no",
    net: torch.nn.Module | None = None,
    logits_chunk: int = 0,
) -> PairLossFn:
    """The preference loss of a PairBatch: one forward pass over its chosen and rejected rows.

    ``net`` is what the forward goes through when it is not ``model`` itself: its DDP wrapper.
    ``logits_chunk``: ``train.logits_chunk`` (``posttrain.algorithms.logprobs.token_logprobs``).
    """

    def loss_fn(mb: PairBatch) -> LossOutput:
        mb = mb.to(model.device)
        with precision(model.device, mixed_precision):
            seq, lengths = response_sums(model if net is None else net, mb.tokens, mb.num_sequences, logits_chunk)
        ref = mb.ref_logps
        p = PairLogps(
            chosen=seq[mb.chosen],
            rejected=seq[mb.rejected],
            chosen_len=lengths[mb.chosen],
            rejected_len=lengths[mb.rejected],
            ref_chosen=None if ref is None else ref[mb.chosen],
            ref_rejected=None if ref is None else ref[mb.rejected],
        )
        return preference_loss(p, mb.weights, cfg)

    return loss_fn


def pool_embedder(cfg: Config) -> Callable[[list[list[str]]], list[list[float]]] | None:
    """Offline DivPO's ``embedding`` criterion: ``dpo.divpo_embedding_model``, else the model ``model.path``
    names, loaded from disk (the policy as it starts, so a resumed run ranks its pools as the first did).

    Loaded at the first call (the train file's pools; the held-out file's reuse it); None when the
    criterion is another.
    """
    d = cfg.dpo
    if d.pairs != "divpo" or d.divpo_criterion != "embedding":
        return None
    path = d.divpo_embedding_model or cfg.model.path
    assert path is not None  # open_training resolved model.path
    loaded: list[Any] = []

    def embed(pools: list[list[str]]) -> list[list[float]]:
        from posttrain.eval.embedding_diversity import embedding_diversity
        from posttrain.models.io import load_model, load_tokenizer

        if not loaded:
            loaded.extend([load_model(path, cfg.model.dtype, cfg.model.device).eval(), load_tokenizer(path)])
        return embedding_diversity(loaded[0], loaded[1], pools, cfg.train.micro_batch_size)

    return embed


def load_pair_data(
    cfg: Config, tokenizer: PreTrainedTokenizerBase, max_len: int | None, command: str, context: int | None = None
) -> tuple[list[EncodedPair], list[EncodedPair]]:
    """Encoded (train, held-out) pairs of ``data.path`` (and ``data.eval_path``): its pairs, or the pairs
    ``dpo.pairs`` builds from its scored response pools (``posttrain.tasks.pools``).

    Each pair fits ``max_len`` (``train.max_seq_len`` capped by the model's ``context``) as
    ``data.truncation`` says; the pairs cut or dropped are reported in one line.
    """
    path = cfg.data.path
    if path is None:
        raise ConfigError(
            f"`posttrain {command}` trains on preference pairs: set data.path to a file of {SHAPE} rows",
            file="command line",
            field="data.path",
        )
    if is_pool_file(path):  # scored response pools: pairs by dpo.pairs (random, best_worst, divpo)
        splits = load_pool_pairs(
            path, cfg.data.eval_path, cfg.dpo, cfg.seed, pool_embedder(cfg), cfg.data.heldout_fraction
        )
    else:
        splits = load_preferences(path, cfg.data.eval_path, cfg.data.heldout_fraction)
    # a pair with chosen == rejected teaches nothing: dropped and counted, refused when all are
    splits = {k: distinct_pairs(v, path if k == "train" else cfg.data.eval_path or path) for k, v in splits.items()}
    if cfg.data.length_instructions.enabled:  # LIFT: length-instructed copies of the training pairs
        from posttrain.tasks.length import lift_pairs

        splits["train"] = lift_pairs(splits["train"], cfg.data.length_instructions, cfg.seed)
    limit = None if max_len is None else Limit.of(cfg.train.max_seq_len, max_len, context)
    mode = cfg.data.truncation
    counts = LengthCount(mode, limit), LengthCount(mode, limit)
    train = encode_pairs(tokenizer, splits["train"], limit, path, mode, counts[0])
    test_path = cfg.data.eval_path or path
    test = [] if not splits["test"] else encode_pairs(tokenizer, splits["test"], limit, test_path, mode, counts[1])
    said = [f"{split}: {c.summary('pairs')}" for split, c in zip(("train", "held-out"), counts) if c.summary("pairs")]
    if said:  # once, before training starts (data.truncation)
        console.print(f"{command}: {'; '.join(said)}", markup=False, highlight=False)
    return train, test


def run_pair_steps(
    cfg: Config,
    stage: str,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: list[EncodedPair],
    loss_fn: PairLossFn,
    optimizer: Optimizer,
    scheduler: LambdaLR,
    start: int,
    writer: MetricsWriter,
    ref_logps: torch.Tensor | None = None,
    net: torch.nn.Module | None = None,
    layout: Layout = "pad",
) -> dict[str, float]:
    """Optimiser steps ``start`` .. ``train.max_steps`` over ``data``; checkpoints under output_dir.

    ``layout``: how micro-batches lay out their sequences (``collate_pairs``), for a ``loss_fn``
    that reads them: DPO's shares prefixes with ``train.packing``, the reward model's packs.
    """
    bs, mbs = cfg.train.batch_size, cfg.train.micro_batch_size
    steps_per_epoch = len(data) // bs
    if steps_per_epoch == 0:
        raise DataError(
            f"only {len(data)} training pairs, fewer than one batch of {bs}",
            file=cfg.data.path,
            field="train.batch_size",
        )
    pad = int(tokenizer.pad_token_id)  # type: ignore[arg-type]
    stats: dict[str, float] = {}
    with progress() as bar:
        task_id = bar.add_task(stage, total=cfg.train.max_steps, completed=start, info="")
        for step in range(start, cfg.train.max_steps):
            epoch, rows = step_rows(len(data), bs, cfg.seed, step)
            rows = distributed.shard(rows)
            micro = pair_micro_batches(data, rows, mbs, pad, ref_logps, layout)
            t0 = time.perf_counter()
            trained = model if net is None else net
            stats = optimizer_step(trained, optimizer, scheduler, micro, loss_fn, float(len(rows)), cfg.train.grad_clip)
            tokens = int(distributed.all_sum([sum(mb.num_tokens for mb in micro)])[0])
            record = {"stage": stage, "step": step + 1, "epoch": epoch, **stats, "tokens": tokens}
            writer.write({**record, "tokens_per_s": tokens / (time.perf_counter() - t0)})
            bar.update(task_id, advance=1, info=f"loss {stats['loss']:.4f}, lr {stats['lr']:.2e}")
            if cfg.train.save_every and (step + 1) % cfg.train.save_every == 0:
                save_checkpoint(
                    cfg.out / "checkpoints",
                    step + 1,
                    model,
                    tokenizer,
                    optimizer,
                    scheduler,
                    keep=cfg.train.keep_checkpoints,
                )
    return stats


@torch.no_grad()
def heldout_metrics(
    model: PreTrainedModel,
    loss_fn: PairLossFn,
    data: list[EncodedPair],
    micro_batch_size: int,
    pad_id: int,
    ref_logps: torch.Tensor | None = None,
    layout: Layout = "pad",
) -> dict[str, float]:
    """The loss and every loss metric over all of ``data``, averaged exactly over pairs (``layout``: as
    ``run_pair_steps``)."""
    was_training = model.training
    model.eval()
    loss, sums = 0.0, dict[str, list[float]]()
    for mb in pair_micro_batches(data, list(range(len(data))), micro_batch_size, pad_id, ref_logps, layout):
        out = loss_fn(mb)
        loss += float(out.loss_sum)
        for key, (num, den) in out.metrics.items():
            acc = sums.setdefault(key, [0.0, 0.0])
            acc[0] += num
            acc[1] += den
    model.train(was_training)
    return {"loss": loss / len(data), **{k: num / den for k, (num, den) in sums.items() if den > 0}}


def write_heldout(out: Path, writer: MetricsWriter, stage: str, step: int, metrics: dict[str, Any]) -> None:
    """Held-out metrics to ``heldout.json`` and, prefixed ``heldout_``, to metrics.jsonl."""
    (out / "heldout.json").write_text(json.dumps(metrics, indent=2) + "\n")
    writer.write({"stage": stage, "step": step, **{f"heldout_{k}": v for k, v in metrics.items()}})
