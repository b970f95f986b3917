"""The report of ``posttrain compare``: a table over seeds and a plot of accuracy against samples.

Input is a list of evaluation points, one per (method, seed, number of sampled
training responses): ``{"method", "seed", "responses", "pass_at_k": {k: value},
"greedy_accuracy"}``. A method's final numbers are those of each seed's last point,
reported as the mean and the sample standard deviation (n - 1) over seeds; the
curve is the mean over seeds at each budget, with a band of one standard deviation.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0.0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def top_k(points: list[dict[str, Any]]) -> str:
    """The largest k every point reports pass@k for."""
    common = set.intersection(*(set(p["pass_at_k"]) for p in points))
    return str(max(int(k) for k in common))


def summarize_points(points: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method, in order of first appearance: final pass@1, pass@k, greedy (mean, std) and the curve."""
    k = top_k(points)
    methods: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        methods.setdefault(p["method"], []).append(p)
    out: dict[str, dict[str, Any]] = {}
    for name, rows in methods.items():
        last: dict[Any, dict[str, Any]] = {}
        for p in sorted(rows, key=lambda p: p["responses"]):
            last[p["seed"]] = p
        finals = list(last.values())
        budgets = sorted({p["responses"] for p in rows})
        curve = []
        for b in budgets:
            at = [p["pass_at_k"]["1"] for p in rows if p["responses"] == b]
            curve.append((b, *mean_std(at), len(at)))
        out[name] = {
            "seeds": len(finals),
            "responses": max(p["responses"] for p in finals),
            "pass_at_1": mean_std([p["pass_at_k"]["1"] for p in finals]),
            f"pass_at_{k}": mean_std([p["pass_at_k"][k] for p in finals]),
            "greedy_accuracy": mean_std([p["greedy_accuracy"] for p in finals]),
            "curve": curve,
        }
    return out


def _pm(value: tuple[float, float], seeds: int) -> str:
    mean, std = value
    return f"{mean:.3f}" if seeds == 1 else f"{mean:.3f} ± {std:.3f}"


def format_comparison(summary: dict[str, dict[str, Any]], k: str, notes: list[str]) -> str:
    """The markdown table of final held-out numbers per method, with how they were measured."""
    lines = [
        f"| method | seeds | sampled responses | pass@1 | pass@{k} | greedy accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        n = s["seeds"]
        lines.append(
            f"| {name} | {n} | {s['responses']} | {_pm(s['pass_at_1'], n)} | {_pm(s[f'pass_at_{k}'], n)} "
            f"| {_pm(s['greedy_accuracy'], n)} |"
        )
    return "\n".join(lines + [""] + [f"- {note}" for note in notes]) + "\n"


def plot_accuracy_curve(summary: dict[str, dict[str, Any]], path: Path, baseline: str | None = None) -> None:
    """Held-out pass@1 against sampled training responses, mean over seeds with a ±1 std band.

    Every method's curve starts at the ``baseline`` method's point (the shared SFT checkpoint).
    """
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    start = summary[baseline]["curve"][0] if baseline in summary else None
    for name, s in summary.items():
        if name == baseline:
            continue
        curve = ([start] if start is not None else []) + list(s["curve"])
        xs = [c[0] for c in curve]
        means = [c[1] for c in curve]
        stds = [c[2] for c in curve]
        ax.plot(xs, means, marker=".", label=name)
        ax.fill_between(xs, [m - d for m, d in zip(means, stds)], [m + d for m, d in zip(means, stds)], alpha=0.15)
    if start is not None:
        ax.scatter([start[0]], [start[1]], color="black", zorder=3, label=baseline)
    ax.set_xlabel("sampled training responses")
    ax.set_ylabel("held-out pass@1")
    ax.set_title("held-out accuracy against sampled responses (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
