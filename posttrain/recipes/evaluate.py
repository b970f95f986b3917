"""Evaluation recipe: ``posttrain eval`` over one or more model directories.

Each model is evaluated by ``posttrain.eval.sampling.evaluate_model`` (pass@k,
maj@k, greedy accuracy and held-out NLL from cached, chunked samples), on the same
problems and settings; the results go to ``eval.json``, ``eval.md`` and a pass@k plot.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from posttrain.config import Config
from posttrain.errors import DataError
from posttrain.eval.cache import tokenizer_hash
from posttrain.eval.diversity import format_diversity_table
from posttrain.eval.sampling import evaluate_model
from posttrain.models.io import load_model, load_tokenizer, resolve_model_path
from posttrain.recipes.common import setup
from posttrain.rollout.factory import build_engine, with_saved_head
from posttrain.tasks.aggregation import aggregation_record, format_aggregation_table
from posttrain.tasks.multi import MultiTask, format_task_table, merge_records
from posttrain.tasks.registry import make_task
from posttrain.train.metrics import console


def cache_root(cfg: Config) -> Path:
    return Path(cfg.eval.cache_dir) if cfg.eval.cache_dir else cfg.out / "eval_cache"


def _headline(name: str, r: dict[str, Any]) -> str:
    n = r["samples_per_problem"]
    top = str(max(int(k) for k in r["pass_at_k"])) if r["pass_at_k"] else None
    if top is None:
        text = f"eval {name}: no problem could be scored"
    else:
        text = (
            f"eval {name}: pass@1 {r['pass_at_k']['1']:.3f}, greedy {r['greedy_accuracy']:.3f}, "
            f"pass@{top} {r['pass_at_k'][top]:.3f} ({r['num_scored_problems']} problems x {n} samples)"
        )
    if r["num_unscored_problems"]:
        text += (
            f"; {r['num_unscored_problems']} problems unscored "
            f"({r['check_timeouts']} checks timed out, {r['check_errors']} raised)"
        )
    return text


def evaluate_dirs(cfg: Config, models: dict[str, str], whole_file: bool = False) -> dict[str, dict[str, Any]]:
    """Evaluate each named model directory on the same problems and samples settings.

    ``whole_file`` (``posttrain eval``): without ``data.eval_path`` every row of ``data.path``
    is a test problem. The pipeline, compare and predict keep the split their training used.
    """
    results = {}
    for name, given in models.items():
        path = str(resolve_model_path(given, cfg.out / f"{name}_from_gguf"))  # a .gguf, pkg: or a Hub id too
        tokenizer = load_tokenizer(path)
        task = make_task(cfg.data, tokenizer, whole_file=whole_file)  # each model's own chat template
        model = load_model(path, cfg.model.dtype, cfg.model.device)
        # engine.backend: the in-process sampler (with the saved temperature head under eval.sampling.adaptive), Ray or vLLM
        engine = with_saved_head(build_engine(cfg, model, tokenizer, path), path, cfg.eval.sampling.adaptive)
        try:
            if isinstance(task, MultiTask):  # data.tasks: each task on its own test split, with its own checker
                results[name] = merge_records(
                    {t: evaluate_model(model, tokenizer, sub, cfg, str(path), cache_root(cfg), engine)
                     for t, sub in task.tasks.items()}
                )  # fmt: skip
            else:
                results[name] = evaluate_model(model, tokenizer, task, cfg, str(path), cache_root(cfg), engine)
        finally:
            engine.close()
        results[name]["tokenizer_hash"] = tokenizer_hash(path)
        if cfg.data.task == "aggregation":  # AggLM: the aggregator against majority vote and pass@m at equal m
            results[name].update(
                aggregation_record(task, results[name], cfg.eval.num_problems, cfg.seed, cfg.model.dtype)
            )
        console.print(_headline(name, results[name]))
        for t, record in results[name].get("tasks", {}).items():
            console.print("  " + _headline(f"{name} {t}", record))
    return results


def run_eval(cfg: Config) -> dict[str, dict[str, Any]]:
    """``posttrain eval``: evaluate ``eval.models`` (or ``model.path``) and write the results."""
    out = setup(cfg)
    models = dict(cfg.eval.models) or ({"model": cfg.model.path} if cfg.model.path else {})
    if not models:
        raise DataError("nothing to evaluate: set model.path or eval.models", file="command line", field="model.path")
    results = evaluate_dirs(cfg, models, whole_file=True)
    write_results(out, results)
    return results


def write_results(out: Path, results: dict[str, dict[str, Any]]) -> None:
    """``eval.json``, ``eval.md`` (the comparison table and how it was estimated) and ``plots/pass_at_k.png``."""
    from posttrain.eval.plots import plot_pass_at_k
    from posttrain.eval.report import format_eval_markdown

    tmp = out / "eval.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(out / "eval.json")
    extra = [t for t in (format_diversity_table(results), format_aggregation_table(results),
                          format_task_table(results)) if t]  # fmt: skip
    (out / "eval.md").write_text("\n\n".join([format_eval_markdown(results), *extra]) + "\n")
    plot_pass_at_k(results, out / "plots" / "pass_at_k.png")
