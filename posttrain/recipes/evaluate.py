"""Evaluation recipe: many samples per held-out problem, scored honestly.

For each checkpoint: ``eval.samples_per_problem`` samples of each of
``eval.num_problems`` test problems at the evaluation temperature give pass@k for
every power of two k up to n (unbiased estimator) with bootstrap intervals, and
maj@k; one greedy sample per problem gives greedy accuracy; the held-out
demonstrations give the mean per-token NLL (the generalisation loss that
predicts post-RL results better than pass@1, per Kang et al. 2025).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from posttrain.algorithms.logprobs import token_logprobs
from posttrain.config import Config, EvalConfig
from posttrain.data.batch import collate
from posttrain.data.tokenize import check_length, encode_example, encode_prompt
from posttrain.errors import DataError
from posttrain.eval.passk import bootstrap_ci, maj_at_k, mean_pass_at_k, pass_at_k, powers_of_two
from posttrain.models.io import context_length, load_model, load_tokenizer
from posttrain.recipes.common import derive_seed, make_task, setup
from posttrain.rollout.base import SamplingParams
from posttrain.rollout.torch_engine import TorchEngine
from posttrain.tasks.base import Task
from posttrain.train.metrics import console


@torch.no_grad()
def heldout_nll(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task, n: int, seed: int, batch_size: int
) -> float | None:
    """Mean per-token NLL of the test split's demonstrations; None when it has none."""
    examples = [ex for ex in task.examples("test", n, seed) if ex.completion is not None]
    if not examples:
        return None
    ctx = context_length(model)
    pairs = [encode_example(tokenizer, ex, ctx) for ex in examples]
    pad = int(tokenizer.pad_token_id)  # type: ignore[arg-type]
    total, count = 0.0, 0.0
    was_training = model.training
    model.eval()
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s : s + batch_size]
        batch = collate([p for p, _ in chunk], [c for _, c in chunk], pad)
        batch = batch.to(model.device)
        logprobs, _ = token_logprobs(model, batch)
        total -= float((logprobs * batch.response_mask).sum())
        count += float(batch.response_mask.sum())
    model.train(was_training)
    return total / count


def evaluate_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task, ecfg: EvalConfig, seed: int
) -> dict[str, Any]:
    problems = task.examples("test", ecfg.num_problems, seed)
    if not problems:
        raise DataError("the test split is empty: nothing to evaluate", file=getattr(task, "path", task.name))
    ctx = context_length(model)
    prompts = [encode_prompt(tokenizer, task.prompt(ex)) for ex in problems]
    for ex, p in zip(problems, prompts):
        check_length(ex, len(p), ecfg.max_new_tokens, ctx)
    engine = TorchEngine(model, tokenizer, batch_size=ecfg.batch_size)
    n = ecfg.samples_per_problem
    sampling = SamplingParams(ecfg.temperature, ecfg.top_p, 0, ecfg.max_new_tokens, seed=derive_seed(seed, 4))
    samples = engine.generate([p for p in prompts for _ in range(n)], sampling)
    scored = [
        [(task.extract(c.text), task.verify(ex, c.text) > 0) for c in samples[i * n : (i + 1) * n]]
        for i, ex in enumerate(problems)
    ]
    counts = [(n, sum(ok for _, ok in row)) for row in scored]
    ks = powers_of_two(n)
    greedy = engine.generate(prompts, SamplingParams(0.0, 1.0, 0, ecfg.max_new_tokens))
    greedy_acc = sum(task.verify(ex, c.text) > 0 for ex, c in zip(problems, greedy)) / len(problems)
    return {
        "pass_at_k": {str(k): v for k, v in mean_pass_at_k(counts, ks).items()},
        "pass_at_k_ci": {str(k): list(bootstrap_ci([pass_at_k(nn, c, k) for nn, c in counts], seed=seed)) for k in ks},
        "maj_at_k": {str(k): maj_at_k(scored, k, seed=seed) for k in ks},
        "greedy_accuracy": greedy_acc,
        "mean_completion_tokens": sum(len(c.completion_ids) for c in samples) / len(samples),
        "truncated_frac": sum(c.finish_reason == "length" for c in samples) / len(samples),
        "heldout_nll": heldout_nll(model, tokenizer, task, ecfg.heldout_demos, seed, ecfg.batch_size)
        if ecfg.heldout_demos
        else None,
        "num_problems": len(problems),
        "samples_per_problem": n,
        "temperature": ecfg.temperature,
    }


def evaluate_dirs(cfg: Config, models: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Evaluate each named model directory on the same problems and samples settings."""
    task = make_task(cfg.data)
    results = {}
    for name, path in models.items():
        tokenizer = load_tokenizer(path)
        model = load_model(path, cfg.model.dtype, cfg.model.device)
        results[name] = evaluate_model(model, tokenizer, task, cfg.eval, cfg.seed)
        r = results[name]
        console.print(
            f"eval {name}: pass@1 {r['pass_at_k']['1']:.3f}, greedy {r['greedy_accuracy']:.3f}, "
            f"pass@{r['samples_per_problem']} {r['pass_at_k'][str(max(powers_of_two(r['samples_per_problem'])))]:.3f}"
        )
    return results


def run_eval(cfg: Config) -> dict[str, dict[str, Any]]:
    """``posttrain eval``: evaluate ``eval.models`` (or ``model.path``) and write the results."""
    out = setup(cfg)
    models = dict(cfg.eval.models) or ({"model": cfg.model.path} if cfg.model.path else {})
    if not models:
        raise DataError("nothing to evaluate: set model.path or eval.models", file="command line", field="model.path")
    results = evaluate_dirs(cfg, models)
    write_results(out, results)
    return results


def write_results(out: Path, results: dict[str, dict[str, Any]]) -> None:
    from posttrain.eval.report import format_summary_table, plot_pass_at_k

    tmp = out / "eval.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(out / "eval.json")
    (out / "eval.md").write_text(format_summary_table(results) + "\n")
    plot_pass_at_k(results, out / "plots" / "pass_at_k.png")
