"""``posttrain compare``: offline, semi-online and online DPO against GRPO, one SFT checkpoint, one budget.

The question (Lanchantin et al. 2025, "Bridging Offline and Online Reinforcement
Learning for LLMs", arXiv 2506.21495): at the same number of sampled responses,
how do DPO with generator sync every s steps (s = 0 offline, s = 1 online) and
GRPO compare? Their finding is that semi-online and online DPO match GRPO and beat
offline DPO; this recipe measures it on the task of the config.

1. SFT once from the base model (``stages.sft``), or take ``compare.sft_path``.
2. Evaluate that checkpoint: the first point of every curve.
3. For each seed (``seed``, ``seed + 1``, ...) and each of ``compare.methods``
   (``name: {recipe: dpo | grpo, <overlay>}``): the recipe's stage config plus the
   method's overlay, starting from the SFT checkpoint. ``train.max_steps`` is set
   so the run samples ``compare.sampled_responses`` training responses; training
   runs in ``compare.eval_points`` equal segments, each resumed from the last one's
   checkpoint (exact: the resume tests), and each segment ends with a held-out
   evaluation (``stages.eval``, the same problems and seed for every run).
4. ``compare.md`` and ``compare.json``: the final held-out pass@1 and pass@k of
   every method, mean ± std over seeds, and ``plots/accuracy_vs_samples.png``.

Every finished evaluation is a line of ``points.jsonl``; ``--resume`` keeps them
and continues each unfinished run from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from posttrain.config import Config, apply_overlay, load_config
from posttrain.errors import ConfigError
from posttrain.eval.comparison import format_comparison, plot_accuracy_curve, summarize_points, top_k
from posttrain.models.io import is_model_dir
from posttrain.recipes.common import model_dir, setup
from posttrain.recipes.dpo import train_dpo
from posttrain.recipes.evaluate import evaluate_dirs
from posttrain.recipes.grpo import train_grpo
from posttrain.recipes.sft import train_sft
from posttrain.train.metrics import console, read_metrics

RECIPES: dict[str, Callable[..., Path]] = {"dpo": train_dpo, "grpo": train_grpo}


def responses_per_step(recipe: str, cfg: Config) -> int:
    """Training responses one iteration samples: one DPO optimiser step, or one GRPO iteration."""
    return cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt


def method_configs(path: str | Path | None, overrides: list[str] | tuple[str, ...]) -> dict[str, tuple[str, Config]]:
    """(recipe, config) of every method, checked before any training spends its minutes."""
    base = load_config(path, overrides)
    c = base.compare
    file = str(path) if path else "command line"
    if not c.methods:
        raise ConfigError("no methods to compare", file=file, field="compare.methods")
    out = {}
    for name, overlay in c.methods.items():
        where = f"compare.methods.{name}"
        recipe = overlay["recipe"]
        cfg = apply_overlay(
            load_config(path, overrides, stage=recipe), {k: v for k, v in overlay.items() if k != "recipe"}
        )
        if recipe == "dpo" and cfg.dpo.mode != "online":
            raise ConfigError("a DPO method samples its own pairs here: set dpo.mode: online", file=file, field=where)
        if cfg.optim.schedule != "constant":
            raise ConfigError(
                "runs are trained in resumed segments: use optim.schedule=constant", file=file, field=where
            )
        per_run = responses_per_step(recipe, cfg) * c.eval_points
        if c.sampled_responses % per_run:
            raise ConfigError(
                f"must be a multiple of {per_run} (responses per step x compare.eval_points) for {name}",
                file=file,
                field="compare.sampled_responses",
            )
        out[name] = (recipe, cfg)
    return out


class Points:
    """``points.jsonl``: one line per finished evaluation, so a resumed comparison repeats none."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        self.rows = read_metrics(path) if resume else []
        path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))

    def find(self, method: str, seed: int | None, responses: int) -> dict[str, Any] | None:
        match = [r for r in self.rows if (r["method"], r["seed"], r["responses"]) == (method, seed, responses)]
        return match[-1] if match else None

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def evaluate_point(
    eval_cfg: Config, points: Points, method: str, seed: int | None, responses: int, model: Path
) -> dict[str, Any]:
    found = points.find(method, seed, responses)
    if found is not None:
        return found
    label = method if seed is None else f"{method}/seed{seed}/{responses}"
    r = evaluate_dirs(eval_cfg, {label: str(model)})[label]
    row = {"method": method, "seed": seed, "responses": responses, "pass_at_k": r["pass_at_k"]}
    row["greedy_accuracy"] = r["greedy_accuracy"]
    points.add(row)
    return row


def run_method(
    name: str, recipe: str, cfg: Config, seed: int, out: Path, eval_cfg: Config, points: Points, resume: bool
) -> None:
    """Train one method with one seed in segments, evaluating after each."""
    c = cfg.compare
    per_step = responses_per_step(recipe, cfg)
    seg = c.sampled_responses // per_step // c.eval_points
    run_dir = out / name / f"seed{seed}"
    for j in range(1, c.eval_points + 1):
        responses = j * seg * per_step
        if points.find(name, seed, responses) is not None:
            continue
        train = dataclasses.replace(cfg.train, max_steps=j * seg, save_every=seg)
        run_cfg = dataclasses.replace(cfg, seed=seed, output_dir=str(run_dir), train=train)
        final = RECIPES[recipe](run_cfg, resume=resume or j > 1)
        evaluate_point(eval_cfg, points, name, seed, responses, final)


def run_compare(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), resume: bool = False
) -> dict[str, dict[str, Any]]:
    """Run every method and seed; write ``compare.{md,json}``, ``points.jsonl`` and the plot."""
    base = load_config(path, overrides)
    methods = method_configs(path, overrides)
    out = setup(base)
    eval_cfg = dataclasses.replace(load_config(path, overrides, stage="eval"), output_dir=str(out))
    sft = base.compare.sft_path
    if sft is None:
        sft_cfg = load_config(path, overrides, stage="sft")
        base_model = str(model_dir(base).model.path)
        stage = dataclasses.replace(
            sft_cfg, output_dir=str(out / "sft"), model=dataclasses.replace(sft_cfg.model, path=base_model)
        )
        done = is_model_dir(out / "sft" / "final")
        sft = str(out / "sft" / "final") if resume and done else str(train_sft(stage, resume=resume))
    points = Points(out / "points.jsonl", resume)
    evaluate_point(eval_cfg, points, "sft", None, 0, Path(sft))
    for i in range(base.compare.seeds):
        for name, (recipe, cfg) in methods.items():
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=sft))
            run_method(name, recipe, cfg, base.seed + i, out, eval_cfg, points, resume)
    return write_comparison(out, points.rows, base, eval_cfg, methods)


def write_comparison(
    out: Path, rows: list[dict[str, Any]], base: Config, eval_cfg: Config, methods: dict[str, tuple[str, Config]]
) -> dict[str, dict[str, Any]]:
    summary = summarize_points(rows)
    k = top_k(rows)
    e = eval_cfg.eval
    notes = [
        f"Held-out: {e.num_problems} test problems x {e.samples_per_problem} samples at T={e.sampling.temperature} "
        f"(pass@k unbiased, Chen et al. 2021); greedy = one greedy sample per problem.",
        f"Each method: {base.compare.sampled_responses} sampled training responses per seed, from the same SFT "
        f"checkpoint; mean ± sample std over {base.compare.seeds} seeds (seed {base.seed}..).",
    ]
    for name, (recipe, cfg) in methods.items():
        r = cfg.rollout
        what = "GRPO" if recipe == "grpo" else f"DPO sync_every={r.sync_every}, ref_sync_every={r.ref_sync_every}"
        notes.append(f"{name}: {what}, {responses_per_step(recipe, cfg)} responses per step, lr {cfg.optim.lr:g}.")
    table = format_comparison(summary, k, notes)
    (out / "compare.md").write_text(
        f"# posttrain compare: {base.name}\n\n{table}\n![](plots/accuracy_vs_samples.png)\n"
    )
    (out / "compare.json").write_text(json.dumps({"summary": summary, "points": rows}, indent=2) + "\n")
    plot_accuracy_curve(summary, out / "plots" / "accuracy_vs_samples.png", baseline="sft")
    console.print(table)
    return summary
