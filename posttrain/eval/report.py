"""The human report of a run: one markdown file and the plots it embeds.

``write_report`` turns the training metrics (one record per optimiser step,
any stage names) and the evaluation results (one entry per checkpoint) into
``report.md`` with ``plots/loss.png`` (one axis per stage: SFT's cross-entropy
and GRPO's surrogate loss are different quantities on different scales),
``plots/reward.png`` (each step's mean reward, a moving average and its band),
``plots/rl_diagnostics.png`` (entropy, clip fraction, KL, completion length,
truncation rate: the numbers that tell a collapsing or stalled RL run),
``plots/curriculum.png`` when the run had ``data.curriculum: ucb`` (each task's mix
weight, mean reward and learnability per step: what DUMP's bandit chose and why) and
``plots/pass_at_k.png`` (pass@k with maj@k and greedy accuracy marked). The
report states how every number was estimated, so a reader can tell pass@1 at
temperature T from greedy accuracy, says of each difference between checkpoints
whether the two 95% intervals overlap (overlapping intervals: the difference is
not established by this evaluation; separate ones: it is, at about that level),
shows a few sample generations of each checkpoint, and says so when a plot was
skipped for lack of data instead of failing.

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

from posttrain.eval.diversity import format_diversity_table

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


def _stage_axes(fig: Figure, n: int) -> list[Any]:
    """``n`` stacked axes, each with a y scale of its own."""
    axes = fig.subplots(n, 1, squeeze=False)
    return [row[0] for row in axes]


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
    """Loss per step, one axis per stage (an SFT NLL and an RL surrogate share no scale). Whether a plot was written."""
    series = _series(metrics, "loss")
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
    series = _series(metrics, "reward")
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
    present = [(key, label, _series(metrics, key)) for key, label in DIAGNOSTICS]
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
        lines = {t: xy for t in tasks for xy in _series(metrics, f"task/{t}/{key}").values()}
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
        maj = _by_k(results[name].get("maj_at_k"))
        if maj:
            all_ks.update(maj)
            ax.plot(list(maj), list(maj.values()), linestyle="--", marker="s", markersize=4,
                    color=line.get_color(), label=f"{name} maj@k")  # fmt: skip
        greedy = _num(results[name].get("greedy_accuracy"))
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


def _interval(r: dict[str, Any], metric: str) -> tuple[float, float] | None:
    """The 95% bootstrap interval of ``metric`` (pass@1 or greedy accuracy) in one checkpoint's record."""
    if metric == "pass@1":
        band = _ci_band(r.get("pass_at_k_ci"), [1])
        return None if band is None else (band[0][0], band[1][0])
    ci = r.get("greedy_accuracy_ci")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and _num(ci[0]) is not None and _num(ci[1]) is not None:
        return float(ci[0]), float(ci[1])
    return None


def overlap_verdict(a: tuple[float, float] | None, b: tuple[float, float] | None) -> str:
    """Whether two 95% intervals overlap, in words; overlapping ones do not establish a difference.

    Non-overlap of two 95% intervals is a stricter test than a 95% test of the difference
    (it corresponds to roughly p < 0.006 for equal widths; Schenker & Gentleman 2001), so
    "overlap" does not prove there is no difference, only that this evaluation does not show one.
    """
    if a is None or b is None:
        return "no interval to compare"
    ia, ib = f"[{a[0]:.3f}, {a[1]:.3f}]", f"[{b[0]:.3f}, {b[1]:.3f}]"
    if a[1] < b[0] or b[1] < a[0]:
        return f"95% intervals {ia} and {ib} do not overlap: a difference beyond sampling noise"
    return f"95% intervals {ia} and {ib} overlap: not shown to differ by this evaluation"


def _pass1_changes(results: dict[str, dict[str, Any]]) -> list[str]:
    names = list(results)
    if len(names) < 2:
        return ["- one checkpoint: nothing to compare."]
    lines = []
    for before, after in zip(names, names[1:]):
        ra, rb = results[before], results[after]
        a, b = _by_k(ra.get("pass_at_k")).get(1), _by_k(rb.get("pass_at_k")).get(1)
        if a is None or b is None:
            lines.append(f"- {before} → {after}: {DASH} (pass@1 missing)")
        else:
            verdict = overlap_verdict(_interval(ra, "pass@1"), _interval(rb, "pass@1"))
            lines.append(f"- {before} → {after}: {100 * (b - a):+.1f} points ({a:.3f} → {b:.3f}); {verdict}")
        ga, gb = _num(ra.get("greedy_accuracy")), _num(rb.get("greedy_accuracy"))
        if ga is not None and gb is not None:
            verdict = overlap_verdict(_interval(ra, "greedy"), _interval(rb, "greedy"))
            lines.append(f"- {before} → {after}, greedy accuracy: {100 * (gb - ga):+.1f} points "
                         f"({ga:.3f} → {gb:.3f}); {verdict}")  # fmt: skip
    return lines


SAMPLES_SHOWN = 3  # sample generations per checkpoint in eval.json and the report


def sample_generations(
    problems: list[Any], samples: list[list[Any]], checks: list[list[Any]], count: int = SAMPLES_SHOWN
) -> list[dict[str, Any]]:
    """The first sample of the first ``count`` problems, with its check: what the numbers are made of."""
    out = []
    for ex, row, row_checks in list(zip(problems, samples, checks))[:count]:
        if not row:
            continue
        check = row_checks[0]
        out.append({
            "id": str(ex.id), "prompt": _prompt_text(ex.prompt),
            "completion": row[0].text, "answer": check.answer,
            "score": check.score if check.status == "ok" else None, "gold": getattr(ex, "answer", None),
        })  # fmt: skip
    return out


def _prompt_text(prompt: Any) -> str:
    """A prompt as a reader sees it: the string, or a chat prompt's turns one per line as ``role: content``."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role')}: {m.get('content')}" if isinstance(m, dict) else str(m) for m in prompt)


def _clip(text: str, limit: int = 400) -> str:
    """``text`` cut to ``limit`` characters, every line indented to stay inside the list item's code block."""
    text = text.strip()
    text = text if len(text) <= limit else text[:limit] + " …"
    return text.replace("\n", "\n  ")


def format_samples(results: dict[str, dict[str, Any]]) -> str | None:
    """A few generations of every checkpoint (``sample_generations`` in its record); None when none has any."""
    parts = []
    for name, r in results.items():
        rows = r.get("sample_generations") or []
        if not rows:
            continue
        parts.append(f"#### {_cell(name)}")
        for row in rows:
            score = row.get("score")
            verdict = "unscored" if score is None else f"score {score:g}"
            parts.append(f"- problem `{row.get('id')}` (gold {row.get('gold')!r}; answer {row.get('answer')!r}, "
                         f"{verdict})\n\n  ```text\n  {_clip(str(row.get('prompt', '')))}\n  --- completion ---\n"
                         f"  {_clip(str(row.get('completion', '')))}\n  ```")  # fmt: skip
    return "\n\n".join(parts) if parts else None


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
    has_diagnostics = plot_diagnostics(metrics, plots / "rl_diagnostics.png")
    has_curriculum = plot_curriculum(metrics, plots / "curriculum.png")
    parts = [f"# {title}", "## Evaluation", format_summary_table(results)]
    if results:
        parts += [_estimation_note(results), "### Change in pass@1", "\n".join(_pass1_changes(results))]
    note = check_failures_note(results)
    if note:
        parts.append(note)
    diversity = format_diversity_table(results)
    if diversity:
        parts.append(diversity)  # distinct-n, distinct answers, pairwise similarity (its own heading)
    shown = format_samples(results)
    if shown:
        parts += ["### Sample generations", "The first sample of the first test problems, as checked.", shown]
    parts += [
        "## Training",
        _stage_summary(metrics),
        "## Plots",
        "### Loss",
        _figure(has_loss, "loss.png", "loss per step", "no record has a loss"),
        "### Reward",
        _figure(has_reward, "reward.png", "mean reward per step", "no record has a reward"),
        *(["### RL diagnostics", "![RL diagnostics per step](plots/rl_diagnostics.png)"] if has_diagnostics else []),
        *(["### Curriculum", f"![{CURRICULUM_ALT}](plots/curriculum.png)"] if has_curriculum else []),
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
