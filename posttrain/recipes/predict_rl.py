"""``posttrain predict-rl``: measure which post-SFT numbers predict the post-RL winner.

The evidence behind ``posttrain predict``, rerunnable (``recipes/predict-rl.yaml``):

1. from one base model, train one SFT checkpoint per ``predict.variants`` entry
   (dotted overrides of the SFT stage: epochs, data fraction, demonstration-length
   filter, ...);
2. evaluate every SFT checkpoint (``stages.eval``): post-SFT pass@1, pass@k at
   large k, held-out NLL, greedy accuracy, maj@k; and record what
   ``posttrain predict`` would have said before any RL;
3. run the same GRPO stage (``stages.grpo``, identical budget and seed) from each;
4. evaluate every post-RL checkpoint (``predict.rl_samples_per_problem`` samples)
   for post-RL pass@1;
5. report Spearman's rho (with an exact permutation p-value) between each
   post-SFT predictor and post-RL pass@1 across the checkpoints.

The held-out NLL enters as its negation, so for every predictor a positive rho
means "ranks checkpoints the way RL does". With ``--resume``, stages whose
``final/`` exists are skipped; evaluations come from the cache either way.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from posttrain.config import Config, load_config
from posttrain.errors import ConfigError, DataError
from posttrain.eval.predict import format_prediction, large_k, predict, ranks, spearman, spearman_pvalue
from posttrain.eval.report import plot_pass_at_k, plot_predictors
from posttrain.models.io import is_model_dir
from posttrain.recipes.common import model_dir, setup
from posttrain.recipes.evaluate import evaluate_dirs
from posttrain.recipes.grpo import train_grpo
from posttrain.recipes.sft import train_sft
from posttrain.train.metrics import console, read_metrics


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def variant_configs(path: str | Path | None, overrides: list[str] | tuple[str, ...], base: Config) -> dict[str, Config]:
    """The SFT stage config of each variant, all checked before any training starts."""
    if len(base.predict.variants) < 2:
        raise ConfigError("predict-rl needs at least two SFT variants", file=str(path), field="predict.variants")
    out = {}
    for name, variant in base.predict.variants.items():
        if not isinstance(variant, dict):
            raise ConfigError(
                "a variant is a mapping of dotted overrides", file=str(path), field=f"predict.variants.{name}"
            )
        extra = [f"{k}={json.dumps(v)}" for k, v in _flatten(variant).items()]
        try:
            out[name] = load_config(path, [*overrides, *extra], stage="sft")
        except ConfigError as e:
            raise ConfigError(e.message, file=str(path), field=f"predict.variants.{name}.{e.field}") from None
    return out


def _at(cfg: Config, out: Path, model_path: str) -> Config:
    return dataclasses.replace(cfg, output_dir=str(out), model=dataclasses.replace(cfg.model, path=model_path))


def _train(stage: str, cfg: Config, resume: bool) -> float:
    """Run one SFT or GRPO stage unless resuming past it; its wall time in seconds."""
    if resume and is_model_dir(Path(cfg.out) / "final"):
        return 0.0
    t0 = time.perf_counter()
    (train_sft if stage == "sft" else train_grpo)(cfg, resume=resume)
    return time.perf_counter() - t0


def correlations(sft: dict[str, dict[str, Any]], rl: dict[str, dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """Spearman's rho of each post-SFT predictor with post-RL pass@1, across checkpoints."""
    names = list(sft)
    target = [rl[n]["pass_at_k"]["1"] for n in names]
    nll = [sft[n]["heldout_nll"] for n in names]
    rows: list[tuple[str, list[float]]] = [
        ("post-SFT pass@1", [sft[n]["pass_at_k"]["1"] for n in names]),
        ("held-out NLL (negated)", [-v for v in nll] if None not in nll else []),
        (f"pass@{k}", [sft[n]["pass_at_k"][str(k)] for n in names]),
        ("post-SFT greedy accuracy", [sft[n]["greedy_accuracy"] for n in names]),
        (f"maj@{k}", [sft[n]["maj_at_k"][str(k)] for n in names]),
    ]
    ks = sorted(int(x) for x in sft[names[0]]["pass_at_k"])
    rows += [(f"pass@{kk}", [sft[n]["pass_at_k"][str(kk)] for n in names]) for kk in ks if kk not in (1, k)]
    # a predictor some checkpoint lacks (no demonstrations, nothing scored) has no ranking to test
    return [
        {
            "predictor": label,
            "values": dict(zip(names, xs)),
            "rho": spearman(xs, target),
            "p": spearman_pvalue(xs, target),
        }
        for label, xs in rows
        if xs and None not in xs
    ]


def budget_groups(steps: dict[str, int], tolerance: float = 0.05) -> list[list[str]]:
    """Checkpoints grouped by SFT step count, within ``tolerance`` of the group's smallest (floor rounding)."""
    groups: list[list[str]] = []
    for name in sorted(steps, key=lambda n: steps[n]):
        if groups and steps[name] <= steps[groups[-1][0]] * (1 + tolerance):
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups


def equal_budget(
    steps: dict[str, int], sft: dict[str, dict[str, Any]], rl: dict[str, dict[str, Any]], k: int
) -> dict[str, Any] | None:
    """The correlations within the largest group of checkpoints trained for the same number of SFT steps.

    Across budgets, "trained longer" alone can carry every predictor; at one budget
    only the choice of epochs and data varies, which is the choice a predictor is for.
    """
    group = [n for n in sft if n in max(budget_groups(steps), key=len)]
    if len(group) < 3:
        return None
    rows = correlations({n: sft[n] for n in group}, {n: rl[n] for n in group}, k)
    return {"checkpoints": group, "rows": rows}


def run_predict_rl(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), resume: bool = False
) -> dict[str, Any]:
    base = load_config(path, overrides)
    sft_cfgs = variant_configs(path, overrides, base)
    grpo_cfg = load_config(path, overrides, stage="grpo")
    eval_cfg = load_config(path, overrides, stage="eval")
    out = setup(base)
    base_model = str(model_dir(base).model.path)
    seconds: dict[str, dict[str, float]] = {name: {} for name in sft_cfgs}
    for name, cfg in sft_cfgs.items():
        seconds[name]["sft"] = _train("sft", _at(cfg, out / name / "sft", base_model), resume)
    t0 = time.perf_counter()
    sft = evaluate_dirs(eval_cfg, {name: str(out / name / "sft" / "final") for name in sft_cfgs})
    eval_seconds = {"sft": time.perf_counter() - t0}
    try:
        prediction = predict(sft, base.predict.large_k)
    except ValueError as e:  # e.g. every problem of a checkpoint unscored: nothing to rank by
        raise DataError(f"cannot rank the SFT checkpoints: {e}", file=str(path), field="predict") from None
    for name in sft_cfgs:
        seconds[name]["grpo"] = _train(
            "grpo", _at(grpo_cfg, out / name / "grpo", str(out / name / "sft" / "final")), resume
        )
    rl_eval = dataclasses.replace(
        eval_cfg, eval=dataclasses.replace(eval_cfg.eval, samples_per_problem=base.predict.rl_samples_per_problem)
    )
    t0 = time.perf_counter()
    rl = evaluate_dirs(rl_eval, {name: str(out / name / "grpo" / "final") for name in sft_cfgs})
    eval_seconds["rl"] = time.perf_counter() - t0
    k = large_k(sft, base.predict.large_k)
    steps = {n: len(read_metrics(out / n / "sft" / "metrics.jsonl")) for n in sft_cfgs}
    record = {
        "large_k": k,
        "variants": base.predict.variants,
        "sft_steps": steps,
        "post_sft": sft,
        "post_rl": rl,
        "prediction_before_rl": prediction,
        "spearman_with_post_rl_pass1": correlations(sft, rl, k),
        "spearman_at_equal_sft_budget": equal_budget(steps, sft, rl, k),
        "seconds": {"train": seconds, "eval": eval_seconds},
    }
    write_predict_rl(out, record)
    return record


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _checkpoint_table(record: dict[str, Any]) -> str:
    sft, rl, k = record["post_sft"], record["post_rl"], record["large_k"]
    rl_rank = dict(zip(rl, ranks([rl[n]["pass_at_k"]["1"] for n in rl])))
    header = ["checkpoint", "SFT overrides", "SFT steps", "post-SFT pass@1", f"pass@{k}", "held-out NLL",
              "greedy", "mean tokens", "post-RL pass@1 [CI]", "post-RL rank"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for n in sft:
        overrides = ", ".join(f"{key}={value}" for key, value in _flatten(record["variants"][n]).items())
        ci = rl[n]["pass_at_k_ci"]["1"]
        cells = [n, overrides or "—", str(record["sft_steps"][n]), _fmt(sft[n]["pass_at_k"]["1"]),
                 _fmt(sft[n]["pass_at_k"][str(k)]), _fmt(sft[n]["heldout_nll"]), _fmt(sft[n]["greedy_accuracy"]),
                 _fmt(sft[n]["mean_completion_tokens"], 1),
                 f"{_fmt(rl[n]['pass_at_k']['1'])} [{_fmt(ci[0])}, {_fmt(ci[1])}]", f"{rl_rank[n]:g}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _rho_table(rows: list[dict[str, Any]], k: int) -> tuple[str, str]:
    """The main predictors' table, and rho of pass@k at the other k."""
    main = [r for r in rows if not (r["predictor"].startswith("pass@") and r["predictor"] != f"pass@{k}")]
    table = ["| post-SFT predictor | Spearman rho with post-RL pass@1 | p (exact permutation) |", "|---|---|---|"]
    table += [f"| {r['predictor']} | {_fmt(r['rho'], 2)} | {_fmt(r['p'], 3)} |" for r in main]
    curve = ["| k | rho of pass@k |", "|---|---|"]
    curve += [f"| {r['predictor'][5:]} | {_fmt(r['rho'], 2)} |" for r in rows if r not in main]
    return "\n".join(table), "\n".join(curve)


def _equal_budget_section(record: dict[str, Any]) -> list[str]:
    same = record.get("spearman_at_equal_sft_budget")
    if not same:
        return ["### At equal SFT budget", "_Fewer than three checkpoints share an SFT budget._"]
    names = same["checkpoints"]
    steps = sorted(record["sft_steps"][n] for n in names)
    table, curve = _rho_table(same["rows"], record["large_k"])
    return [
        f"### At equal SFT budget: {len(names)} checkpoints of {steps[0]}-{steps[-1]} steps ({', '.join(names)})",
        table,
        curve,
    ]


def format_predict_rl(record: dict[str, Any]) -> str:
    """The markdown report: per-checkpoint numbers, the Spearman table, and the pre-RL prediction."""
    table, curve = _rho_table(record["spearman_with_post_rl_pass1"], record["large_k"])
    rl_n = next(iter(record["post_rl"].values()))["samples_per_problem"]
    sft_n = next(iter(record["post_sft"].values()))["samples_per_problem"]
    problems = next(iter(record["post_sft"].values()))["num_problems"]
    return "\n\n".join([
        "# predict-rl: which SFT checkpoint wins after RL",
        f"{len(record['post_sft'])} SFT checkpoints from one base model, then the same GRPO stage from each. "
        f"Post-SFT numbers: {problems} held-out problems × {sft_n} samples; post-RL pass@1: × {rl_n} samples.",
        "## Spearman correlation with post-RL pass@1",
        table,
        "Held-out NLL is negated, so a positive rho means the predictor orders checkpoints as RL does. "
        f"With {len(record['post_sft'])} checkpoints the p-values are exact over all pairings.",
        "### pass@k at other k",
        curve,
        *_equal_budget_section(record),
        "## Per checkpoint",
        _checkpoint_table(record),
        "![predictors against post-RL pass@1](plots/predictors.png)\n\n![post-SFT pass@k](plots/pass_at_k.png)",
        "## What `posttrain predict` said before RL",
        format_prediction(record["prediction_before_rl"]),
    ])  # fmt: skip


def write_predict_rl(out: Path, record: dict[str, Any]) -> None:
    (out / "predict-rl.json").write_text(json.dumps(record, indent=2) + "\n")
    plot_pass_at_k(record["post_sft"], out / "plots" / "pass_at_k.png")
    target = {n: r["pass_at_k"]["1"] for n, r in record["post_rl"].items()}
    rows = {r["predictor"]: r for r in record["spearman_with_post_rl_pass1"]}
    nll = "held-out NLL (lower is better)"
    panels = {
        label: ({n: -v for n, v in r["values"].items()} if label == "held-out NLL (negated)" else r["values"], r["rho"])
        for label, r in rows.items()
        if label in ("post-SFT pass@1", "held-out NLL (negated)", f"pass@{record['large_k']}")
    }
    panels = {(nll if label.startswith("held-out") else label): value for label, value in panels.items()}
    plot_predictors(panels, target, out / "plots" / "predictors.png", log_reversed=(nll,))
    (out / "predict-rl.md").write_text(format_predict_rl(record) + "\n")
    console.print(f"predict-rl: report {out / 'predict-rl.md'}")
    for r in record["spearman_with_post_rl_pass1"][:3]:
        console.print(f"  Spearman({r['predictor']}, post-RL pass@1) = {_fmt(r['rho'], 2)} (p {_fmt(r['p'], 3)})")
