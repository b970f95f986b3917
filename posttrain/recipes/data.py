"""``posttrain data NAME``: the wiring of the data commands (``posttrain.datagen``).

Sets up ``output_dir``, loads what a command needs (synth: the model, its rollout engine,
the task whose verifier judges, an optional reward model; prune with
``weights: perplexity``: the scoring model), runs it and prints its counts.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from posttrain.config import Config
from posttrain.datagen.commands import FILTERS, run_filter
from posttrain.errors import DataError
from posttrain.recipes.common import model_dir, setup
from posttrain.train.metrics import console


def run_data(name: str, cfg: Config) -> dict[str, Any]:
    """Run ``posttrain data NAME`` on ``cfg``; its summary (also in ``output_dir/summary.json``)."""
    out = setup(cfg)  # seeds, threads, quiet transformers, output_dir and its config.json
    if name in FILTERS:
        line_nll = _perplexity_model(cfg) if name == "prune" and cfg.datagen.prune.weights == "perplexity" else None
        summary = run_filter(name, cfg, line_nll)
    elif name == "synth":
        summary = run_synth(cfg)
    else:
        from posttrain.datagen.select import run_select

        summary = run_select(cfg)
    counts = {k: v for k, v in summary.items() if k in ("rows", "kept", "removed", "dropped")}
    console.print(f"data {name}: {json.dumps(counts)} -> {out}", soft_wrap=True)
    return summary


def _perplexity_model(cfg: Config) -> Any:
    """Lines -> (NLL, tokens) under ``datagen.prune.model`` (default ``model.path``, or the tiny model)."""
    from posttrain.datagen.prune import line_nlls
    from posttrain.models.io import load_model, load_tokenizer

    path = cfg.datagen.prune.model
    if path is not None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=path))
    cfg = model_dir(cfg)
    tokenizer = load_tokenizer(cfg.model.path)  # type: ignore[arg-type]
    model = load_model(cfg.model.path, cfg.model.dtype, cfg.model.device)  # type: ignore[arg-type]
    return lambda lines: line_nlls(model, tokenizer, lines)


def run_synth(cfg: Config) -> dict[str, Any]:
    """Load the model, its engine and the task; synthesize the shards not yet written; release the engine.

    ``datagen.backend: ray`` samples on the Ray rollout engine's ``datagen.workers`` actors.
    """
    from posttrain.data.tokenize import encode_prompt
    from posttrain.datagen.synth import Tools, filter_name, load_seeds, rip_scorer, synthesize
    from posttrain.models.io import context_length, load_model, load_tokenizer
    from posttrain.rollout.factory import build_engine
    from posttrain.tasks.prompting import styled_prompt
    from posttrain.tasks.registry import make_task

    if cfg.datagen.backend == "ray" and cfg.engine.backend == "torch":
        cfg = dataclasses.replace(
            cfg, engine=dataclasses.replace(cfg.engine, backend="ray", workers=cfg.datagen.workers)
        )
    cfg = model_dir(cfg)
    tokenizer = load_tokenizer(cfg.model.path)  # type: ignore[arg-type]
    model = load_model(cfg.model.path, cfg.model.dtype, cfg.model.device)  # type: ignore[arg-type]
    task = make_task(cfg.data, tokenizer)
    seeds = load_seeds(cfg, task)
    score = rip_scorer(cfg) if filter_name(cfg) == "rip" else None
    engine = build_engine(cfg, model, tokenizer, cfg.model.path)  # type: ignore[arg-type]
    context = context_length(model)
    longest = max(cfg.datagen.synth.gen_sampling.max_new_tokens, cfg.sampling.max_new_tokens)

    def encode(text: str) -> list[int]:
        ids = encode_prompt(tokenizer, styled_prompt(task, text))
        if context is not None and len(ids) + longest > context:
            raise DataError(
                f"a synth prompt of {len(ids)} tokens + {longest} new tokens is longer than the model's context of "
                f"{context}: use fewer or shorter seeds (datagen.synth.seeds_per_prompt) or fewer new tokens",
                file=cfg.datagen.input or "the seed tasks",
                field="datagen.synth.gen_sampling.max_new_tokens",
            )
        return ids

    try:
        tools = Tools(engine, encode, task, score)
        return synthesize(cfg, tools, seeds)
    finally:
        engine.close()
