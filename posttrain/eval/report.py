"""The human report of a run: one markdown file and the plots it embeds.

``write_report`` turns the training metrics (one record per optimiser step,
any stage names) and the evaluation results (one entry per checkpoint) into
``report.md`` with the plots of ``posttrain.eval.plots`` under ``plots/`` (loss,
reward, RL diagnostics, the curriculum when there was one, pass@k). The
report states how every number was estimated, so a reader can tell pass@1 at
temperature T from greedy accuracy, says of each difference between checkpoints
whether the two 95% intervals overlap (overlapping intervals: the difference is
not established by this evaluation; separate ones: it is, at about that level),
shows a few sample generations of each checkpoint, and says so when a plot was
skipped for lack of data instead of failing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from posttrain.eval.diversity import format_diversity_table
from posttrain.eval.plots import (
    CURRICULUM_ALT,
    by_k,
    ci_band,
    finite,
    plot_curriculum,
    plot_diagnostics,
    plot_loss,
    plot_pass_at_k,
    plot_reward,
    stage_series,
)

DASH = "—"


def _fmt(value: Any, digits: int = 3) -> str:
    v = finite(value)
    return DASH if v is None else f"{v:.{digits}f}"


def _cell(text: str) -> str:
    # a "|" in a checkpoint or stage name would split the markdown cell
    return text.replace("|", "\\|")


def _at_max_k(table: Mapping[Any, Any] | None, shared_k: int | None) -> str:
    """The value at the largest k, with the k spelled out when checkpoints disagree on it."""
    values = by_k(table)
    if not values:
        return DASH
    k = max(values)
    return _fmt(values[k]) if shared_k == k else f"{_fmt(values[k])} (k={k})"


def _shared_max_k(results: dict[str, dict[str, Any]], key: str) -> int | None:
    """The largest k of ``key`` if all checkpoints that have it agree, else None."""
    maxima = {max(t) for t in (by_k(r.get(key)) for r in results.values()) if t}
    return maxima.pop() if len(maxima) == 1 else None


def _pass1_cell(r: dict[str, Any]) -> str:
    value = by_k(r.get("pass_at_k")).get(1)
    if value is None:
        return DASH
    ci = ci_band(r.get("pass_at_k_ci"), [1])
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
    temps = sorted({r["temperature"] for r in results.values() if finite(r.get("temperature")) is not None})
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
        band = ci_band(r.get("pass_at_k_ci"), [1])
        return None if band is None else (band[0][0], band[1][0])
    ci = r.get("greedy_accuracy_ci")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and finite(ci[0]) is not None and finite(ci[1]) is not None:
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
        a, b = by_k(ra.get("pass_at_k")).get(1), by_k(rb.get("pass_at_k")).get(1)
        if a is None or b is None:
            lines.append(f"- {before} → {after}: {DASH} (pass@1 missing)")
        else:
            verdict = overlap_verdict(_interval(ra, "pass@1"), _interval(rb, "pass@1"))
            lines.append(f"- {before} → {after}: {100 * (b - a):+.1f} points ({a:.3f} → {b:.3f}); {verdict}")
        ga, gb = finite(ra.get("greedy_accuracy")), finite(rb.get("greedy_accuracy"))
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
    losses, rewards = stage_series(metrics, "loss"), stage_series(metrics, "reward")
    lines = ["| stage | steps | last step | first loss | last loss | last reward |", "|---|---|---|---|---|---|"]
    for stage, records in stages.items():
        steps = [s for s in (finite(r.get("step")) for r in records) if s is not None]
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
