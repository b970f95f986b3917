"""The plots of a run's report, and the series they are drawn from.

``posttrain.eval.report`` embeds them: ``loss.png`` (one axis per stage: SFT's
cross-entropy and GRPO's surrogate loss are different quantities on different scales),
``reward.png`` (each step's mean reward, a moving average and its band),
``rl_diagnostics.png`` (entropy, clip fraction, KL, completion length, truncation rate:
the numbers that tell a collapsing or stalled RL run), ``curriculum.png`` when the run had
``data.curriculum: ucb`` (each task's mix weight, mean reward and learnability per step:
what DUMP's bandit chose and why) and ``pass_at_k.png`` (pass@k with maj@k and greedy
accuracy marked); ``posttrain predict-rl`` draws its predictor scatter here too. Each
``plot_*`` returns whether it wrote a file; with nothing to plot it removes a stale one and
returns False, so a report never sits beside an old run's figure.

Plots are drawn on ``matplotlib.figure.Figure`` objects with an explicit Agg
canvas rather than through pyplot: that renders headless without switching
the process-wide backend (a caller in a notebook keeps theirs), and there is
no global figure registry for an unclosed figure to leak into.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def finite(value: Any) -> float | None:
    """The value as a finite float, or None for missing, non-numeric or NaN/inf."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def by_k(table: Mapping[Any, Any] | None) -> dict[int, float]:
    """A ``{k: value}`` mapping with str or int keys as sorted int keys, dropping unusable values."""
    out: dict[int, float] = {}
    for key, value in (table or {}).items():
        v = finite(value)
        if v is not None:
            out[int(key)] = v
    return dict(sorted(out.items()))


def stage_series(metrics: list[dict[str, Any]], key: str) -> dict[str, tuple[list[float], list[float]]]:
    """Per stage, in order of first appearance, the (steps, values) of records with a usable ``key``."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    seen: dict[str, int] = {}
    for record in metrics:
        stage = str(record.get("stage", "(no stage)"))
        seen[stage] = seen.get(stage, 0) + 1
        value = finite(record.get(key))
        if value is None:
            continue
        step = finite(record.get("step"))
        # a record without a step is placed by its position within the stage
        xs, ys = out.setdefault(stage, ([], []))
        xs.append(step if step is not None else float(seen[stage]))
        ys.append(value)
    return out


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    fig.clear()


def _skip(path: Path) -> bool:
    # a stale plot from an earlier run must not sit next to a report that says there is none
    path.unlink(missing_ok=True)
    return False


def _stage_axes(fig: Figure, n: int) -> list[Any]:
    """``n`` stacked axes, each with a y scale of its own."""
    axes = fig.subplots(n, 1, squeeze=False)
    return [row[0] for row in axes]


def _plot_series(metrics: list[dict[str, Any]], key: str, ylabel: str, path: Path) -> bool:
    """One line per stage of ``key`` against step; False (and no file) when there is nothing to plot."""
    series = stage_series(metrics, key)
    if not series:
        return _skip(path)
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for stage, (xs, ys) in series.items():
        ax.plot(xs, ys, label=stage, marker="." if len(xs) < 50 else None)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ylabel} per step")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    return True


def plot_loss(metrics: list[dict[str, Any]], path: Path) -> bool:
    """Loss per step, one axis per stage (an SFT NLL and an RL surrogate share no scale). Whether a plot was written."""
    series = stage_series(metrics, "loss")
    if not series:
        return _skip(path)
    fig = Figure(figsize=(7, 2.6 * len(series) + 0.6))
    for ax, (stage, (xs, ys)) in zip(_stage_axes(fig, len(series)), series.items()):
        ax.plot(xs, ys, marker="." if len(xs) < 50 else None)
        ax.set_ylabel(f"{stage} loss")
        ax.set_title(f"{stage}: loss per step", fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ax.set_xlabel("step")
    _save(fig, path)
    return True


def smooth_window(n: int) -> int:
    """The moving average's width for ``n`` points: a tenth of them, at least 1, at most 50."""
    return max(1, min(50, n // 10))


def moving_band(ys: list[float], window: int) -> tuple[list[float], list[float], list[float]]:
    """Trailing moving mean of ``ys`` over ``window`` points, and mean - std, mean + std of the same points."""
    mean, lo, hi = [], [], []
    for i in range(len(ys)):
        part = ys[max(0, i - window + 1) : i + 1]
        m = sum(part) / len(part)
        sd = math.sqrt(sum((y - m) ** 2 for y in part) / len(part))
        mean.append(m)
        lo.append(m - sd)
        hi.append(m + sd)
    return mean, lo, hi


def plot_reward(metrics: list[dict[str, Any]], path: Path) -> bool:
    """Mean reward per step, faint, with a moving average and a band of one standard deviation of the
    same window around it, one line per stage that logs one. Returns whether a plot was written."""
    series = stage_series(metrics, "reward")
    if not series:
        return _skip(path)
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    widths = []
    for stage, (xs, ys) in series.items():
        window = smooth_window(len(ys))
        widths.append(window)
        mean, lo, hi = moving_band(ys, window)
        (line,) = ax.plot(xs, mean, label=f"{stage} (moving mean of {window})")
        ax.plot(xs, ys, color=line.get_color(), alpha=0.3, linewidth=0.8)
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("mean reward")
    ax.set_title("mean reward per step; faint: each step, shaded: ±1 std of the window")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    return True


# the RL diagnostics GRPO logs (posttrain.recipes.grpo), each with what it shows
DIAGNOSTICS = (
    ("entropy", "token entropy"),  # falling to ~0: the policy has collapsed onto few answers
    ("clip_frac", "clip fraction"),  # share of tokens whose ratio was clipped: how far updates go off-policy
    ("kl", "KL to reference"),
    ("completion_len", "completion tokens"),
    ("truncated_frac", "truncation rate"),  # share of completions cut at max_new_tokens
)


def plot_diagnostics(metrics: list[dict[str, Any]], path: Path) -> bool:
    """One axis per RL diagnostic some record logs, one line per stage. Returns whether a plot was written."""
    present = [(key, label, stage_series(metrics, key)) for key, label in DIAGNOSTICS]
    present = [(key, label, series) for key, label, series in present if series]
    if not present:
        return _skip(path)
    fig = Figure(figsize=(7, 2.2 * len(present) + 0.6))
    for ax, (_key, label, series) in zip(_stage_axes(fig, len(present)), present):
        for stage, (xs, ys) in series.items():
            ax.plot(xs, ys, label=stage, marker="." if len(xs) < 50 else None)
        ax.set_ylabel(label, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    ax.set_xlabel("step")
    fig.suptitle("RL diagnostics per step")
    _save(fig, path)
    return True


# per task of data.tasks (posttrain.data.curriculum.TaskMix.observe): task/<name>/<key>
CURRICULUM = (
    ("weight", "mix weight"),  # the weight the step's prompts were drawn by
    ("reward", "mean reward"),
    ("learnability", "mean |advantage|"),  # DUMP's learnability, the UCB's first term
)


CURRICULUM_ALT = "per-task mix weight, reward and learnability per step"


def curriculum_tasks(metrics: list[dict[str, Any]]) -> list[str]:
    """The tasks of a ``data.curriculum: ucb`` run, in order of first appearance; [] for any other run.

    Only the UCB curriculum logs ``task/<name>/ucb``; a fixed mix's weights are flat lines.
    """
    names: list[str] = []
    for record in metrics:
        for key in record:
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "task" and parts[2] == "ucb" and parts[1] not in names:
                names.append(parts[1])
    return names


def curriculum_series(metrics: list[dict[str, Any]]) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """Per ``CURRICULUM`` label some record logs, per task, the (steps, values) of a UCB run; {} otherwise."""
    out = {}
    tasks = curriculum_tasks(metrics)
    for key, label in CURRICULUM:
        lines = {t: xy for t in tasks for xy in stage_series(metrics, f"task/{t}/{key}").values()}
        if lines:
            out[label] = lines
    return out


def plot_curriculum(metrics: list[dict[str, Any]], path: Path) -> bool:
    """DUMP's curriculum: one axis per quantity (``CURRICULUM``), one line per task, against step.

    Returns whether a plot was written: only for a run with ``data.curriculum: ucb``.
    """
    present = list(curriculum_series(metrics).items())
    if not present:
        return _skip(path)
    fig = Figure(figsize=(7, 2.2 * len(present) + 0.6))
    for ax, (label, lines) in zip(_stage_axes(fig, len(present)), present):
        for t, (xs, ys) in lines.items():
            ax.plot(xs, ys, label=t, marker="." if len(xs) < 50 else None)
        ax.set_ylabel(label, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax.set_xlabel("step")
    fig.suptitle("curriculum over data.tasks (UCB) per step")
    _save(fig, path)
    return True


def plot_pass_at_k(results: dict[str, dict[str, Any]], path: Path) -> bool:
    """pass@k against k on a log2 axis, one line per checkpoint, with its bootstrap band when present."""
    curves = {name: by_k(r.get("pass_at_k")) for name, r in results.items()}
    curves = {name: c for name, c in curves.items() if c}
    if not curves:
        return _skip(path)
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    all_ks: set[int] = set()
    for name, curve in curves.items():
        ks = list(curve)
        all_ks.update(ks)
        (line,) = ax.plot(ks, list(curve.values()), marker="o", label=name)
        band = ci_band(results[name].get("pass_at_k_ci"), ks)
        if band is not None:
            ax.fill_between(ks, band[0], band[1], color=line.get_color(), alpha=0.2, linewidth=0)
        maj = by_k(results[name].get("maj_at_k"))
        if maj:
            all_ks.update(maj)
            ax.plot(list(maj), list(maj.values()), linestyle="--", marker="s", markersize=4,
                    color=line.get_color(), label=f"{name} maj@k")  # fmt: skip
        greedy = finite(results[name].get("greedy_accuracy"))
        if greedy is not None:
            ax.axhline(greedy, linestyle=":", color=line.get_color(), label=f"{name} greedy")
    ax.set_xscale("log", base=2)
    ticks = sorted(all_ks)
    ax.set_xticks(ticks, labels=[str(k) for k in ticks])
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("pass@k")
    ax.set_title(
        "pass@k (unbiased estimator), shaded: bootstrap interval;\ndashed: maj@k, dotted: greedy accuracy", fontsize=10
    )
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    return True


def ci_band(ci: Mapping[Any, Any] | None, ks: list[int]) -> tuple[list[float], list[float]] | None:
    """Lower and upper bounds at each k, or None unless every k has a usable interval."""
    bounds = {int(k): v for k, v in (ci or {}).items() if isinstance(v, (list, tuple)) and len(v) == 2}
    lo = [finite(bounds[k][0]) if k in bounds else None for k in ks]
    hi = [finite(bounds[k][1]) if k in bounds else None for k in ks]
    if any(v is None for v in lo + hi):
        return None
    return [v for v in lo if v is not None], [v for v in hi if v is not None]


def plot_predictors(
    panels: dict[str, tuple[dict[str, float], float | None]],
    target: dict[str, float],
    path: Path,
    log_reversed: tuple[str, ...] = (),
) -> bool:
    """One scatter per predictor: its post-SFT value against post-RL pass@1, a point per checkpoint.

    Panels named in ``log_reversed`` (a loss) get a log x axis running from high to
    low, so that better is to the right in every panel and one bad outlier does not
    squash the rest.
    """
    if not panels:
        return _skip(path)
    fig = Figure(figsize=(4.2 * len(panels), 4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, (values, rho)) in zip(axes, panels.items()):
        names = [n for n in values if n in target]
        xs, ys = [values[n] for n in names], [target[n] for n in names]
        ax.scatter(xs, ys)
        for name, x, y in zip(names, xs, ys):
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(label)
        if label in log_reversed and min(xs, default=0) > 0:
            ax.set_xscale("log")
            ax.invert_xaxis()
        ax.set_ylabel("post-RL pass@1")
        ax.set_title("Spearman rho = " + ("—" if finite(rho) is None else f"{rho:.2f}"))
        ax.grid(alpha=0.3)
    _save(fig, path)
    return True
