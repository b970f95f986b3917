"""Set-up shared by every recipe: seeds, threads, the model directory, the task."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import torch
import transformers

from posttrain.config import Config, DataConfig, to_dict
from posttrain.models.io import check_causal_lm_dir
from posttrain.models.tiny import build_tiny
from posttrain.tasks.arithmetic import ArithmeticTask
from posttrain.tasks.base import Task


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
