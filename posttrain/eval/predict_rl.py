"""predict-rl statistics and report: which post-SFT numbers ranked checkpoints as RL did.

``correlations`` gives Spearman's rho (with an exact permutation p-value) between
each post-SFT predictor and post-RL pass@1 across checkpoints, the held-out NLL
entering as its negation so that a positive rho always means "ranks checkpoints the
way RL does"; ``equal_budget`` repeats it within the largest group of checkpoints
trained for the same number of SFT steps. ``write_predict_rl`` writes
``predict-rl.json``, ``predict-rl.md`` and the plots. Pure, no model: the recipe
(``posttrain.recipes.predict_rl``) trains and evaluates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from posttrain.eval.plots import plot_pass_at_k, plot_predictors
from posttrain.eval.predict import format_prediction, ranks, spearman, spearman_pvalue
from posttrain.train.metrics import console


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


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


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _checkpoint_table(record: dict[str, Any]) -> str:
    sft, rl, k = record["post_sft"], record["post_rl"], record["large_k"]
    rl_rank = dict(zip(rl, ranks([rl[n]["pass_at_k"]["1"] for n in rl])))
    header = ["checkpoint", "SFT overrides", "SFT steps", "post-SFT pass@1", f"pass@{k}", "held-out NLL",
              "greedy", "mean tokens", "post-RL pass@1 [CI]", "post-RL rank"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for n in sft:
        overrides = ", ".join(f"{key}={value}" for key, value in flatten(record["variants"][n]).items())
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
