"""DPO recipe: preference pairs in, a fine-tuned HF model out.

Without a ``rollout`` section, offline DPO on the pairs of ``data.path`` (a file of
``{prompt, chosen, rejected}`` rows): the reference is the initial model, whose
log-probabilities of every pair are computed once before training and cached on
disk under a key of (the reference's weights, the tokenised pairs, the dtype), so a
second run on the same data and model, or a resumed one, never recomputes them.
Then each optimiser step runs chosen and rejected responses through one forward
pass and applies ``dpo.loss`` (``posttrain.algorithms.dpo``). At the end, the loss
and reward accuracy on the held-out pairs go to ``heldout.json``.

With a ``rollout`` section, online and semi-online DPO on the task's prompts
(``posttrain.recipes.online_dpo``).

Under torchrun each rank takes its share of every step's pairs, and of the pairs
whose reference log-probabilities it computes; the shares are gathered so that every
rank holds the whole table and rank 0 writes the cache.

The math lives in ``posttrain.algorithms.dpo``; this file is wiring only.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from transformers import PreTrainedModel

from posttrain.algorithms.dpo import REFERENCE_FREE, PairLogps, preference_loss, sequence_logprobs
from posttrain.algorithms.logprobs import token_logprobs
from posttrain.algorithms.types import LossOutput
from posttrain.config import Config, DPOConfig
from posttrain.data.pairs import EncodedPair, PairBatch, Sequence, flatten_pairs, sequence_batches
from posttrain.models.io import load_model
from posttrain.recipes.launch import open_training
from posttrain.recipes.pairwise import PairLossFn, heldout_metrics, load_pair_data, run_pair_steps, write_heldout
from posttrain.train import distributed
from posttrain.train.checkpoint import load_trainer_state, save_final
from posttrain.train.device import precision
from posttrain.train.loop import build_optimizer
from posttrain.train.metrics import MetricsWriter, console


def train_dpo(cfg: Config, resume: bool = False) -> Path:
    """``posttrain dpo``: offline on ``data.path``, or online when ``cfg.rollout`` is set. Returns ``final``."""
    if cfg.rollout is not None:
        from posttrain.recipes.online_dpo import train_online_dpo

        return train_online_dpo(cfg, resume=resume)
    return train_offline_dpo(cfg, resume=resume)


def dpo_loss_fn(
    model: PreTrainedModel, cfg: DPOConfig, mixed_precision: str = "no", net: torch.nn.Module | None = None
) -> PairLossFn:
    """The preference loss of a PairBatch: one forward pass over its chosen and rejected rows.

    ``net`` is what the forward goes through when it is not ``model`` itself: its DDP wrapper.
    """

    def loss_fn(mb: PairBatch) -> LossOutput:
        mb = mb.to(model.device)
        with precision(model.device, mixed_precision):
            logprobs, _ = token_logprobs(model if net is None else net, mb.tokens)
        seq, lengths = sequence_logprobs(logprobs, mb.tokens.response_mask)
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


@torch.no_grad()
def sequence_logps(
    model: PreTrainedModel, sequences: list[Sequence], pad_id: int, batch_size: int, mixed_precision: str = "no"
) -> torch.Tensor:
    """Summed response log-probability (S,) of each (prompt ids, response ids) under ``model``, on the CPU."""
    was_training = model.training
    model.eval()
    out = []
    for batch in sequence_batches(sequences, pad_id, batch_size, model.device):
        with precision(model.device, mixed_precision):
            logprobs, _ = token_logprobs(model, batch)
        out.append(sequence_logprobs(logprobs, batch.response_mask)[0].cpu())
    model.train(was_training)
    return torch.cat(out)


def _digest_weights(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for f in sorted([*Path(path).glob("*.safetensors"), *Path(path).glob("*.bin")]):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def cached_reference_logps(cfg: Config, data: list[EncodedPair], pad_id: int) -> torch.Tensor:
    """(N, 2) reference log-probabilities of each pair's (chosen, rejected), from disk when cached.

    The key is the reference's weights, the token ids of every pair (which fix the data
    file's content and every tokenisation setting: tokenizer, chat template, eos) and
    the dtype; a change to any of them is a different file.
    """
    path = str(cfg.model.path)
    tokens = hashlib.blake2b(json.dumps(data).encode(), digest_size=16).hexdigest()
    key = hashlib.blake2b(f"{_digest_weights(path)}|{tokens}|{cfg.model.dtype}".encode(), digest_size=12).hexdigest()
    cache = Path(cfg.dpo.cache_dir) if cfg.dpo.cache_dir else cfg.out / "ref_cache"
    file = cache / f"ref_logps-{key}.pt"
    if cfg.dpo.cache_reference and distributed.all_sum([not file.is_file()])[0] == 0:  # every rank sees it
        return torch.load(file)
    ref = load_model(path, cfg.model.dtype, cfg.model.device)
    mbs, mp = 2 * cfg.train.micro_batch_size, cfg.train.mixed_precision
    if distributed.active():
        logps = _gathered_logps(ref, data, pad_id, mbs, mp)
    else:
        logps = sequence_logps(ref, flatten_pairs(data), pad_id, mbs, mp).view(-1, 2)
    del ref
    if cfg.dpo.cache_reference and distributed.is_main():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(file.name + f".tmp{os.getpid()}")
        torch.save(logps, tmp)
        os.replace(tmp, file)
    return logps


def _gathered_logps(
    ref: PreTrainedModel, data: list[EncodedPair], pad_id: int, batch_size: int, mixed_precision: str
) -> torch.Tensor:
    """(N, 2) reference log-probabilities, each rank computing its share of the pairs."""
    rows = distributed.shard(range(len(data)))
    mine = (  # a rank may hold no pairs when there are fewer than ranks
        sequence_logps(ref, flatten_pairs([data[i] for i in rows]), pad_id, batch_size, mixed_precision)
        if rows
        else torch.empty(0)
    )
    logps = torch.empty(len(data), 2)
    for rank_rows, rank_logps in distributed.gather_objects((rows, mine.view(-1, 2))):
        logps[rank_rows] = rank_logps
    return logps


def train_offline_dpo(cfg: Config, resume: bool = False) -> Path:
    """Train on ``data.path``; write ``output_dir/{metrics.jsonl, heldout.json, checkpoints/, final/}``."""
    (cfg, out, ckpt, tokenizer, model, max_len), net = open_training(cfg, resume)
    distributed.check_divisible(cfg.train.batch_size, "train.batch_size")
    train, test = load_pair_data(cfg, tokenizer, max_len, "dpo")
    pad = int(tokenizer.pad_token_id)  # type: ignore[arg-type]
    needs_ref = cfg.dpo.loss not in REFERENCE_FREE
    ref_train = cached_reference_logps(cfg, train, pad) if needs_ref else None
    optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.train.max_steps)
    start = load_trainer_state(ckpt, optimizer, scheduler, model)["step"] if ckpt else 0
    writer = MetricsWriter(out / "metrics.jsonl", resume_step=start if ckpt else None)
    loss_fn = dpo_loss_fn(model, cfg.dpo, cfg.train.mixed_precision, net)
    stats = run_pair_steps(
        cfg, "dpo", model, tokenizer, train, loss_fn, optimizer, scheduler, start, writer, ref_train, net
    )
    if test:
        ref_test = cached_reference_logps(cfg, test, pad) if needs_ref else None
        # every rank evaluates all of it through the model itself (under FSDP a forward is collective)
        held_fn = dpo_loss_fn(model, cfg.dpo, cfg.train.mixed_precision)
        held = heldout_metrics(model, held_fn, test, cfg.train.micro_batch_size, pad, ref_test)
        if distributed.is_main():
            write_heldout(out, writer, "dpo", cfg.train.max_steps, held)
        console.print(f"dpo: held-out reward accuracy {held['reward_accuracy']:.3f} on {len(test)} pairs")
    writer.close()
    final = save_final(model, tokenizer, out / "final")
    if stats:
        console.print(
            f"dpo: {cfg.train.max_steps} steps on {len(train)} pairs, final loss {stats['loss']:.4f} -> {final}"
        )
    return final
