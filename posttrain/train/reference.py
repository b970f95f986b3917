"""The frozen reference of DPO and GRPO's KL term, and offline DPO's cached reference log-probabilities.

``reference_model`` is the initial policy: with LoRA the policy's own base with its
adapters off (``BaseView``), otherwise a second copy loaded from ``model.path``.

``cached_reference_logps`` computes the reference's log-probabilities of every
preference pair once, before training, and caches them on disk under a key of (the
reference's weights, the tokenised pairs, the dtype), so a second run on the same
data and model, or a resumed one, never recomputes them. Under torchrun each rank
computes its share of the pairs; the shares are gathered so that every rank holds
the whole table, and rank 0 writes the cache. The precompute is shown by
``posttrain.train.metrics.phase``, advancing after every batch (a rank shows its share).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import cast

import torch
import transformers
from transformers import PreTrainedModel

from posttrain.algorithms.logprobs import response_sums
from posttrain.config import Config
from posttrain.data.pairs import EncodedPair, Sequence, flatten_pairs, preference_layout, sequence_batches
from posttrain.device import precision
from posttrain.models.io import load_model
from posttrain.models.lora import BaseView, is_lora
from posttrain.train import distributed
from posttrain.train.metrics import Advance, phase


def reference_model(cfg: Config, policy: transformers.PreTrainedModel) -> transformers.PreTrainedModel:
    """The frozen initial policy, for DPO's reference and GRPO's KL term.

    With LoRA, the policy's own base with its adapters off (``BaseView``): equal to
    the initial policy because adapters start at ``lora_B = 0``, and no second copy
    of the weights. Otherwise a second copy loaded from ``model.path``.
    """
    if is_lora(policy):
        return cast(transformers.PreTrainedModel, BaseView(policy))  # called like a model: all a reference needs
    assert cfg.model.path is not None  # model_dir resolved it
    ref = load_model(cfg.model.path, cfg.model.dtype, cfg.model.device).eval()
    ref.requires_grad_(False)
    return ref


@torch.no_grad()
def sequence_logps(
    model: PreTrainedModel,
    sequences: list[Sequence],
    pad_id: int,
    batch_size: int,
    mixed_precision: str = "no",
    logits_chunk: int = 0,
    advance: Advance | None = None,
    packing: bool = False,
) -> torch.Tensor:
    """Summed response log-probability (S,) of each (prompt ids, response ids) under ``model``, on the CPU.

    ``logits_chunk``: ``train.logits_chunk`` (``posttrain.algorithms.logprobs.token_logprobs``);
    ``packing``: ``train.packing``, each batch's responses to one prompt in one row, the prompt and
    whatever else they begin with computed once (``posttrain.data.prefix``), instead of padded.
    ``advance(rows)`` is called after each batch (``posttrain.train.metrics.phase``).
    """
    was_training = model.training
    model.eval()
    out = []
    layout = preference_layout(packing)
    for i, batch in enumerate(sequence_batches(sequences, pad_id, batch_size, model.device, layout)):
        n = min(batch_size, len(sequences) - i * batch_size)
        with precision(model.device, mixed_precision):
            out.append(response_sums(model, batch, n, logits_chunk)[0].cpu())
        if advance is not None:
            advance(len(out[-1]))
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
    mine = len(distributed.shard(range(len(data)))) if distributed.active() else len(data)
    with phase("dpo reference (sequences)", total=2 * mine) as advance:  # this rank's share: two sequences a pair
        if distributed.active():
            logps = _gathered_logps(ref, data, pad_id, mbs, mp, cfg.train.logits_chunk, advance, cfg.train.packing)
        else:
            seqs = flatten_pairs(data)
            logps = sequence_logps(ref, seqs, pad_id, mbs, mp, cfg.train.logits_chunk, advance, cfg.train.packing)
            logps = logps.view(-1, 2)
    del ref
    if cfg.dpo.cache_reference and distributed.is_main():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(file.name + f".tmp{os.getpid()}")
        torch.save(logps, tmp)
        os.replace(tmp, file)
    return logps


def _gathered_logps(
    ref: PreTrainedModel,
    data: list[EncodedPair],
    pad_id: int,
    batch_size: int,
    mixed_precision: str,
    chunk: int = 0,
    advance: Advance | None = None,
    packing: bool = False,
) -> torch.Tensor:
    """(N, 2) reference log-probabilities, each rank computing its share of the pairs."""
    rows = distributed.shard(range(len(data)))
    mine = (  # a rank may hold no pairs when there are fewer than ranks
        sequence_logps(
            ref, flatten_pairs([data[i] for i in rows]), pad_id, batch_size, mixed_precision, chunk, advance, packing
        )
        if rows
        else torch.empty(0)
    )
    logps = torch.empty(len(data), 2)
    for rank_rows, rank_logps in distributed.gather_objects((rows, mine.view(-1, 2))):
        logps[rank_rows] = rank_logps
    return logps
