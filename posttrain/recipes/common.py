"""Set-up shared by every recipe: seeds, threads, the model directory, the task."""

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
from posttrain.models.io import check_causal_lm_dir, context_length, load_model, load_tokenizer
from posttrain.models.tiny import build_tiny
from posttrain.tasks.arithmetic import ArithmeticTask
from posttrain.tasks.base import Task
from posttrain.train.checkpoint import latest_checkpoint

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
    if there is one. ``loader`` replaces the causal-LM loader (the reward model's).
    """
    out = setup(cfg)
    cfg = model_dir(cfg)
    ckpt = latest_checkpoint(out / "checkpoints") if resume else None
    assert cfg.model.path is not None  # model_dir resolved it
    tokenizer = load_tokenizer(cfg.model.path)
    path = ckpt or Path(cfg.model.path)
    model = loader(path, tokenizer) if loader else load_model(path, cfg.model.dtype, cfg.model.device)
    model.train()
    ctx = context_length(model)
    max_len = min(cfg.train.max_seq_len, ctx) if ctx else cfg.train.max_seq_len
    return Stage(cfg, out, ckpt, tokenizer, model, max_len)


def setup(cfg: Config) -> Path:
    """Seed everything, set threads, create the output directory, record the config."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    return out


def model_dir(cfg: Config) -> Config:
    """``cfg`` with ``model.path`` set: the given directory, or the tiny model built once."""
    if cfg.model.path is not None:
        check_causal_lm_dir(cfg.model.path)
        return cfg
    base = cfg.out / "base"
    if not (base / "config.json").is_file():
        build_tiny(cfg.model.tiny, base, cfg.seed)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=str(base)))


def make_task(data: DataConfig) -> Task:
    if data.task == "arithmetic":
        return ArithmeticTask(data.arithmetic)
    from posttrain.tasks.jsonl import JsonlTask

    assert data.path is not None  # checked by config validation
    return JsonlTask(data.path, verifier=data.verifier, eval_path=data.eval_path, format=data.format)


def train_examples_count(data: DataConfig) -> int | None:
    """How many demonstrations to draw: all of a file, ``num_train`` of a generated task."""
    return data.num_train if data.task == "arithmetic" else None


def derive_seed(*parts: int) -> int:
    """A seed for one step of one stage, independent of any RNG state: resume-safe."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p + 0x9E3779B9 + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFF
    return h
