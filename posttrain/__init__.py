"""posttrain: post-training for causal language models.

The command line is a thin layer over these functions, which a notebook can call
directly::

    from posttrain import experiments, load_config, override, train_sft, train_grpo, run_pipeline
    cfg = load_config(experiments.path("quickstart"), ["train.max_steps=50"], stage="sft")
    cfg = override(cfg, "optim.lr=3e-4", "output_dir=runs/notebook")  # a new Config, checked
    sft_dir = train_sft(cfg)
    cfg = load_config({"train": {"max_steps": 50}})  # a dict, checked as a file would be
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {
    "load_config": "posttrain.config",
    "override": "posttrain.config",
    "Config": "posttrain.config",
    "PosttrainError": "posttrain.errors",
    "train_sft": "posttrain.recipes.sft",
    "train_grpo": "posttrain.recipes.grpo",
    "run_eval": "posttrain.recipes.evaluate",
    "evaluate_model": "posttrain.eval.sampling",
    "run_generate": "posttrain.recipes.generate",
    "run_pipeline": "posttrain.recipes.pipeline",
    "run_predict": "posttrain.recipes.predict",
    "run_predict_rl": "posttrain.recipes.predict_rl",
    "train_dpo": "posttrain.recipes.dpo",
    "train_rm": "posttrain.recipes.rm",
    "run_compare": "posttrain.recipes.compare",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    # imported on first use, so `posttrain --help` does not pay for torch and transformers
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'posttrain' has no attribute {name!r}")
