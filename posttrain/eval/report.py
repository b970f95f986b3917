"""The human report of a run: one markdown file and the plots it embeds.

``write_report`` turns the training metrics (one record per optimiser step,
any stage names) and the evaluation results (one entry per checkpoint) into
``report.md`` with ``plots/loss.png``, ``plots/reward.png`` and
``plots/pass_at_k.png``. The report states how every number was estimated,
so a reader can tell pass@1 at temperature T from greedy accuracy, and it
says so when a plot was skipped for lack of data instead of failing.

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

DASH = "—"


def _num(value: Any) -> float | None:
    """The value as a finite float, or None for missing, non-numeric or NaN/inf."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _by_k(table: Mapping[Any, Any] | None) -> dict[int, float]:
    """A ``{k: value}`` mapping with str or int keys as sorted int keys, dropping unusable values."""
    out: dict[int, float] = {}
    for key, value in (table or {}).items():
        v = _num(value)
        if v is not None:
            out[int(key)] = v
    return dict(sorted(out.items()))


def _fmt(value: Any, digits: int = 3) -> str:
    v = _num(value)
    return DASH if v is None else f"{v:.{digits}f}"


def _cell(text: str) -> str:
    # a "|" in a checkpoint or stage name would split the markdown cell
    return text.replace("|", "\\|")


def _series(metrics: list[dict[str, Any]], key: str) -> dict[str, tuple[list[float], list[float]]]:
    """Per stage, in order of first appearance, the (steps, values) of records with a usable ``key``."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    seen: dict[str, int] = {}
    for record in metrics:
        stage = str(record.get("stage", "(no stage)"))
        seen[stage] = seen.get(stage, 0) + 1
        value = _num(record.get(key))
        if value is None:
            continue
        step = _num(record.get("step"))
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


def _plot_series(metrics: list[dict[str, Any]], key: str, ylabel: str, path: Path) -> bool:
    """One line per stage of ``key`` against step; False (and no file) when there is nothing to plot."""
    series = _series(metrics, key)
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
    """Loss per step, one line per stage. Returns whether a plot was written."""
    return _plot_series(metrics, "loss", "loss", path)


def plot_reward(metrics: list[dict[str, Any]], path: Path) -> bool:
    """Mean reward per step, one line per stage that logs one. Returns whether a plot was written."""
    return _plot_series(metrics, "reward", "mean reward", path)


def plot_pass_at_k(results: dict[str, dict[str, Any]], path: Path) -> bool:
    """pass@k against k on a log2 axis, one line per checkpoint, with its bootstrap band when present."""
    curves = {name: _by_k(r.get("pass_at_k")) for name, r in results.items()}
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
        band = _ci_band(results[name].get("pass_at_k_ci"), ks)
        if band is not None:
            ax.fill_between(ks, band[0], band[1], color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xscale("log", base=2)
    ticks = sorted(all_ks)
    ax.set_xticks(ticks, labels=[str(k) for k in ticks])
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("pass@k")
    ax.set_title("pass@k (unbiased estimator); shaded: bootstrap interval")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    return True


def _ci_band(ci: Mapping[Any, Any] | None, ks: list[int]) -> tuple[list[float], list[float]] | None:
    """Lower and upper bounds at each k, or None unless every k has a usable interval."""
    bounds = {int(k): v for k, v in (ci or {}).items() if isinstance(v, (list, tuple)) and len(v) == 2}
    lo = [_num(bounds[k][0]) if k in bounds else None for k in ks]
    hi = [_num(bounds[k][1]) if k in bounds else None for k in ks]
    if any(v is None for v in lo + hi):
        return None
    return [v for v in lo if v is not None], [v for v in hi if v is not None]


def _at_max_k(table: Mapping[Any, Any] | None, shared_k: int | None) -> str:
    """The value at the largest k, with the k spelled out when checkpoints disagree on it."""
    by_k = _by_k(table)
    if not by_k:
        return DASH
    k = max(by_k)
    return _fmt(by_k[k]) if shared_k == k else f"{_fmt(by_k[k])} (k={k})"


def _shared_max_k(results: dict[str, dict[str, Any]], key: str) -> int | None:
    """The largest k of ``key`` if all checkpoints that have it agree, else None."""
    maxima = {max(t) for t in (_by_k(r.get(key)) for r in results.values()) if t}
    return maxima.pop() if len(maxima) == 1 else None


def _pass1_cell(r: dict[str, Any]) -> str:
    value = _by_k(r.get("pass_at_k")).get(1)
    if value is None:
        return DASH
    ci = _ci_band(r.get("pass_at_k_ci"), [1])
    return _fmt(value) if ci is None else f"{_fmt(value)} [{_fmt(ci[0][0])}, {_fmt(ci[1][0])}]"


def _size_cell(r: dict[str, Any]) -> str:
    problems, samples = r.get("num_problems"), r.get("samples_per_problem")
    if problems is None and samples is None:
        return DASH
    scored = r.get("num_scored_problems")
    if scored is not None and problems is not None and scored != problems:
        problems = f"{scored}/{problems}"  # some problems' checks did not finish
    return f"{problems if problems is not None else '?'} × {samples if samples is not None else '?'}"


def format_summary_table(results: dict[str, dict[str, Any]]) -> str:
    """The markdown table of evaluation results, one row per checkpoint."""
    if not results:
        return "_No checkpoint was evaluated._"
    pass_k, maj_k = _shared_max_k(results, "pass_at_k"), _shared_max_k(results, "maj_at_k")
    header = [
        "checkpoint",
        "pass@1 [CI]",
        f"pass@{pass_k if pass_k is not None else 'max k'}",
        f"maj@{maj_k if maj_k is not None else 'max k'}",
        "greedy accuracy",
        "held-out NLL",
        "mean completion tokens",
        "problems × samples",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in results.items():
        row = [
            _cell(name),
            _pass1_cell(r),
            _at_max_k(r.get("pass_at_k"), pass_k),
            _at_max_k(r.get("maj_at_k"), maj_k),
            _fmt(r.get("greedy_accuracy")),
            _fmt(r.get("heldout_nll")),
            _fmt(r.get("mean_completion_tokens"), 1),
            _size_cell(r),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _estimation_note(results: dict[str, dict[str, Any]]) -> str:
    ns = sorted({r["samples_per_problem"] for r in results.values() if r.get("samples_per_problem") is not None})
    temps = sorted({r["temperature"] for r in results.values() if _num(r.get("temperature")) is not None})
    n_text = f"n = {', '.join(str(n) for n in ns)}" if ns else "n"
    t_text = f" at temperature {', '.join(str(t) for t in temps)}" if temps else ""
    return (
        f"pass@k is the unbiased estimator 1 − C(n−c, k)/C(n, k) of Chen et al. (2021) over {n_text} "
        f"samples per problem{t_text} (c correct), averaged over problems; the bracketed interval is a "
        "percentile bootstrap over problems. maj@k is the mean over random draws of k of the n samples "
        "(every subset when there are few) of whether the majority answer is correct; samples without "
        "an answer do not vote and ties are split evenly among the tied answers. Greedy accuracy is one "
        "greedy (temperature 0) completion per problem."
    )


def check_failures_note(results: dict[str, dict[str, Any]]) -> str | None:
    """Which checkpoints have problems left unscored by checks that timed out or raised; None if none."""
    lines = []
    for name, r in results.items():
        unscored = r.get("num_unscored_problems") or 0
        if not unscored:
            continue
        ids = ", ".join(str(u.get("id")) for u in (r.get("unscored_problems") or [])[:5])
        lines.append(
            f"- {_cell(name)}: {unscored} of {r.get('num_problems', '?')} problems unscored "
            f"({r.get('check_timeouts', 0)} checks timed out, {r.get('check_errors', 0)} raised, "
            f"{r.get('checks_skipped', 0)} skipped after those); e.g. {ids}"
        )
    if not lines:
        return None
    head = (
        "Answer checks that did not finish are not scores: a problem with a check that timed out or raised "
        "is left out of pass@k, maj@k and greedy accuracy (listed in eval.json under unscored_problems)."
    )
    return "\n".join([head, *lines])


def format_eval_markdown(results: dict[str, dict[str, Any]]) -> str:
    """``eval.md``: the comparison table, how its numbers were estimated, and any unscored problems."""
    parts = [format_summary_table(results)]
    if results:
        parts.append(_estimation_note(results))
    note = check_failures_note(results)
    if note:
        parts.append(note)
    return "\n\n".join(parts)


def _pass1_changes(results: dict[str, dict[str, Any]]) -> list[str]:
    names = list(results)
    if len(names) < 2:
        return ["- one checkpoint: nothing to compare."]
    lines = []
    for before, after in zip(names, names[1:]):
        a, b = _by_k(results[before].get("pass_at_k")).get(1), _by_k(results[after].get("pass_at_k")).get(1)
        if a is None or b is None:
            lines.append(f"- {before} → {after}: {DASH} (pass@1 missing)")
        else:
            lines.append(f"- {before} → {after}: {100 * (b - a):+.1f} points ({a:.3f} → {b:.3f})")
    return lines


def _stage_summary(metrics: list[dict[str, Any]]) -> str:
    """Per stage: steps logged, last step, first and last loss, last reward."""
    stages: dict[str, list[dict[str, Any]]] = {}
    for record in metrics:
        stages.setdefault(str(record.get("stage", "(no stage)")), []).append(record)
    if not stages:
        return "_No training metrics were recorded._"
    losses, rewards = _series(metrics, "loss"), _series(metrics, "reward")
    lines = ["| stage | steps | last step | first loss | last loss | last reward |", "|---|---|---|---|---|---|"]
    for stage, records in stages.items():
        steps = [s for s in (_num(r.get("step")) for r in records) if s is not None]
        loss = losses.get(stage, ([], []))[1]
        reward = rewards.get(stage, ([], []))[1]
        row = [
            _cell(stage),
            str(len(records)),
            str(int(max(steps))) if steps else DASH,
            _fmt(loss[0]) if loss else DASH,
            _fmt(loss[-1]) if loss else DASH,
            _fmt(reward[-1]) if reward else DASH,
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _figure(written: bool, name: str, alt: str, missing: str) -> str:
    return f"![{alt}](plots/{name})" if written else f"_Nothing to plot: {missing}._"


def write_report(
    run_dir: Path, metrics: list[dict[str, Any]], results: dict[str, dict[str, Any]], title: str = "posttrain run"
) -> Path:
    """Write ``run_dir/report.md`` and its plots under ``run_dir/plots/``; return the report's path."""
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    has_loss = plot_loss(metrics, plots / "loss.png")
    has_reward = plot_reward(metrics, plots / "reward.png")
    has_pass = plot_pass_at_k(results, plots / "pass_at_k.png")
    parts = [f"# {title}", "## Evaluation", format_summary_table(results)]
    if results:
        parts += [_estimation_note(results), "### Change in pass@1", "\n".join(_pass1_changes(results))]
    note = check_failures_note(results)
    if note:
        parts.append(note)
    parts += [
        "## Training",
        _stage_summary(metrics),
        "## Plots",
        "### Loss",
        _figure(has_loss, "loss.png", "loss per step", "no record has a loss"),
        "### Reward",
        _figure(has_reward, "reward.png", "mean reward per step", "no record has a reward"),
        "### pass@k",
        _figure(has_pass, "pass_at_k.png", "pass@k against k", "no checkpoint has pass@k results"),
    ]
    path = run_dir / "report.md"
    # write then rename, so a crash never leaves a half-written report behind
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n\n".join(parts) + "\n")
    tmp.replace(path)
    return path


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
        ax.set_title(f"Spearman rho = {_fmt(rho, 2)}")
        ax.grid(alpha=0.3)
    _save(fig, path)
    return True
