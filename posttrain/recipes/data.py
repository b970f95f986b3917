"""``posttrain data NAME``: the wiring of the data commands (``posttrain.datagen``).

Sets up ``output_dir``, loads what a command needs (synth: the model, its rollout engine,
the task whose verifier judges, an optional reward model; prune with
``weights: perplexity``: the scoring model), runs it and prints its counts.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
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
    """Load the generator (and the target model, if another), their engines and the task; synthesize the
    shards not yet written; release the engines.

    ``datagen.backend: ray``: the shards run on ``datagen.workers`` Ray Data actors, each loading the
    models once (``_shard_worker``); the rows are the in-process rows.
    """
    from posttrain.datagen.backend import map_stream
    from posttrain.datagen.synth import load_seeds, synthesize
    from posttrain.models.io import load_tokenizer
    from posttrain.tasks.registry import make_task

    cfg = model_dir(cfg)
    target = cfg.datagen.synth.target_model
    if target is not None:  # resolved once here (a Hub id, a .gguf, an adapter), not once per actor
        resolved = model_dir(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=target))).model.path
        synth = dataclasses.replace(cfg.datagen.synth, target_model=str(resolved))
        cfg = dataclasses.replace(cfg, datagen=dataclasses.replace(cfg.datagen, synth=synth))
    task = make_task(cfg.data, load_tokenizer(cfg.model.path))  # type: ignore[arg-type]
    seeds = load_seeds(cfg, task)
    if cfg.datagen.backend == "ray":
        make = functools.partial(_shard_worker, cfg, seeds)
        return synthesize(cfg, None, seeds, lambda todo: map_stream(make, todo, cfg.datagen))
    tools, engines = synth_tools(cfg, task)
    try:
        return synthesize(cfg, tools, seeds)
    finally:
        for engine in engines:
            engine.close()


def synth_tools(cfg: Config, task: Any) -> tuple[Any, list[Any]]:
    """synth's ``Tools`` (generator, target, reward model) for ``cfg``, and the engines to close after."""
    from posttrain.datagen.synth import Tools, filter_name, rip_scorer

    how = filter_name(cfg)
    score = rip_scorer(cfg) if how == "rip" else None
    s = cfg.datagen.synth
    other = s.target_model is not None and how != "none"
    budget = s.gen_sampling.max_new_tokens if other else max(s.gen_sampling.max_new_tokens, cfg.sampling.max_new_tokens)
    engine, encode = synth_sampler(cfg, task, str(cfg.model.path), "model.path", budget)
    if not other:
        return Tools(engine, encode, task, score), [engine]
    try:
        target, target_encode = synth_sampler(cfg, task, str(s.target_model), "datagen.synth.target_model",
                                              cfg.sampling.max_new_tokens)  # fmt: skip
    except BaseException:
        engine.close()
        raise
    return Tools(engine, encode, task, score, target, target_encode), [engine, target]


def _shard_worker(cfg: Config, seeds: list[Any]) -> Callable[[list[int]], list[Any]]:
    """On a Ray Data actor: load the models once, in-process engines; then run whole shards as
    ``run_shard`` runs them here (each shard samples with its own seed), returning (kept, dropped)."""
    from posttrain.datagen.synth import run_shard, shard_ranges
    from posttrain.models.io import load_tokenizer
    from posttrain.tasks.registry import make_task

    if cfg.engine.backend == "ray":  # an actor does not start actors of its own
        cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, backend="torch"))
    task = make_task(cfg.data, load_tokenizer(cfg.model.path))  # type: ignore[arg-type]
    tools, _ = synth_tools(cfg, task)
    ranges = shard_ranges(cfg.datagen.synth.num_prompts, cfg.datagen.synth.shard_size)
    return lambda shards: [run_shard(cfg, tools, seeds, ranges[j], j) for j in shards]


def synth_sampler(
    cfg: Config, task: Any, path: str, field: str, budget: int | None = None
) -> tuple[Any, Callable[[str], list[int]]]:
    """(rollout engine, text -> prompt ids) of the model directory ``path``: the generator or the target.

    The prompt is ``task``'s style applied to the text, encoded by the model's own tokenizer; one
    that does not leave ``budget`` new tokens (default ``sampling.max_new_tokens``) in the model's
    context is a clear error.
    """
    from posttrain.data.tokenize import encode_prompt
    from posttrain.models.io import context_length, load_model, load_tokenizer
    from posttrain.rollout.factory import build_engine
    from posttrain.tasks.prompting import styled_prompt

    if field != "model.path":  # resolve the target as model.path is resolved (a Hub id, a .gguf, an adapter)
        cfg = model_dir(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=path)))
        path = str(cfg.model.path)
    tokenizer = load_tokenizer(path)
    model = load_model(path, cfg.model.dtype, cfg.model.device)
    engine = build_engine(cfg, model, tokenizer, path)
    context = context_length(model)
    longest = cfg.sampling.max_new_tokens if budget is None else budget

    def encode(text: str) -> list[int]:
        ids = encode_prompt(tokenizer, styled_prompt(task, text))
        if context is not None and len(ids) + longest > context:
            raise DataError(
                f"a synth prompt of {len(ids)} tokens + {longest} new tokens is longer than the context of "
                f"{path} ({context}): use fewer or shorter seeds (datagen.synth.seeds_per_prompt) or fewer new tokens",
                file=cfg.datagen.input or "the seed tasks",
                field="datagen.synth.gen_sampling.max_new_tokens"
                if field == "model.path"
                else "sampling.max_new_tokens",
            )
        return ids

    return engine, encode
