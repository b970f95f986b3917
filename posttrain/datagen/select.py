"""``posttrain data select``: which teacher traces to distill (NaturalThoughts, Li et al. 2025, arXiv 2507.01921).

From a pool of traces (rows ``{prompt | question | messages, completion | response |
trace, ...}``), choose ``datagen.select.num`` by ``datagen.select.method``:

- ``random``: a seeded uniform sample, the paper's strong baseline;
- ``longest`` / ``shortest``: by the trace's word count (ties: earlier row first);
- ``difficulty``: rows where the teacher and a second model disagree first (the paper's
  most sample-efficient rule with diversity): the teacher's answer is extracted from the
  trace, the second model's from ``select.second_answer_field``, both by the task's
  verifier (``data.verifier``/``data.format``); then agreeing rows, each group in seeded
  random order. With ``select.difficulty_field`` the rows are ranked by that number,
  highest first, instead;
- ``diversity``: strategies are found by ``select.diversity``: ``keywords`` tags each
  trace with the reasoning strategies its words show (the table ``STRATEGIES``: a
  trace's set of tags is its strategy profile), ``ngram_clusters`` clusters traces by
  k-means over their normalised word-bigram count vectors (hashed to 512 dimensions).
  Selection takes one row from each profile or cluster in turn, the rarest first, so
  the set covers as many strategies as the budget allows.

Writes the chosen rows unchanged, in pool order, to ``kept.jsonl`` (an SFT set), and
``report.json``: per chosen row its line, length, answers or strategies; and the
strategy or cluster counts in the pool and in the selection.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from typing import Any

from posttrain.config import Config
from posttrain.datagen.io import Numbered, read_numbered, write_json, write_rows
from posttrain.datagen.text import words
from posttrain.errors import DataError

TRACE_FIELDS = ("completion", "response", "trace")

# reasoning strategies and the words that show them (lowercase, whole words or phrases)
STRATEGIES: dict[str, tuple[str, ...]] = {
    "verification": ("check", "verify", "double-check", "confirm", "sanity"),
    "backtracking": ("wait", "actually", "mistake", "reconsider", "instead", "oops"),
    "case_analysis": ("case", "cases", "otherwise", "either"),
    "decomposition": ("first", "next", "then", "finally", "step"),
    "algebra": ("let x", "equation", "solve for", "variable", "unknown"),
    "enumeration": ("list", "enumerate", "each possible", "try all", "possibilities"),
    "estimation": ("approximately", "roughly", "estimate", "about"),
    "working_backwards": ("backwards", "work back", "reverse"),
}
_DIM = 512


def trace_of(row: Any) -> str | None:
    """The teacher's trace: ``completion``, ``response`` or ``trace``, or a conversation's last assistant turn."""
    if not isinstance(row, dict):
        return None
    for key in TRACE_FIELDS:
        if isinstance(row.get(key), str):
            return str(row[key])
    msgs = row.get("messages")
    if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant":
        return str(msgs[-1].get("content", ""))
    return None


def strategy_tags(trace: str) -> tuple[str, ...]:
    """The strategies whose keywords occur in ``trace`` as whole words, in ``STRATEGIES`` order."""
    text = " " + " ".join(re.findall(r"[\w-]+", trace.lower())) + " "
    return tuple(name for name, keys in STRATEGIES.items() if any(f" {k} " in text for k in keys))


def bigram_vector(trace: str) -> list[float]:
    """Hashed word-bigram counts of ``trace``, L2-normalised."""
    ws = words(trace)
    v = [0.0] * _DIM
    for a, b in zip(ws, ws[1:]):
        v[int.from_bytes(hashlib.blake2b(f"{a} {b}".encode(), digest_size=4).digest(), "big") % _DIM] += 1.0
    norm = sum(x * x for x in v) ** 0.5
    return [x / norm for x in v] if norm else v


def kmeans(vectors: list[list[float]], k: int, seed: int, iters: int = 20) -> list[int]:
    """Cluster labels by Lloyd's k-means from ``k`` seeded distinct starting rows."""
    import numpy as np

    x = np.asarray(vectors, dtype=np.float64)
    k = min(k, len(x))
    rng = np.random.default_rng(seed)
    centres = x[rng.choice(len(x), size=k, replace=False)]
    labels = np.zeros(len(x), dtype=np.int64)
    for _ in range(iters):
        labels = ((x[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
        for c in range(k):
            if (labels == c).any():
                centres[c] = x[labels == c].mean(0)
    return [int(v) for v in labels]


def round_robin(groups: list[Any], n: int, seed: int) -> list[int]:
    """``n`` indices taking one from each group in turn, rarest group first, each group in seeded order."""
    members: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    rng = random.Random(seed)
    for m in members.values():
        rng.shuffle(m)
    order = sorted(members, key=lambda g: (len(members[g]), str(g)))
    chosen: list[int] = []
    while len(chosen) < n and any(members.values()):
        for g in order:
            if members[g] and len(chosen) < n:
                chosen.append(members[g].pop(0))
    return chosen


def choose(cfg: Config, rows: Numbered, traces: list[str]) -> tuple[list[int], dict[str, Any], list[dict[str, Any]]]:
    """(chosen indices, pool-level report, one detail dict per row) for ``select.method``."""
    s = cfg.datagen.select
    n, seed = min(s.num, len(rows)), cfg.seed
    lengths = [len(t.split()) for t in traces]
    detail: list[dict[str, Any]] = [{"line": line, "words": lengths[i]} for i, (line, _) in enumerate(rows)]
    report: dict[str, Any] = {}
    if s.method == "random":
        chosen = random.Random(seed).sample(range(len(rows)), n)
    elif s.method in ("longest", "shortest"):
        sign = -1 if s.method == "longest" else 1
        chosen = sorted(range(len(rows)), key=lambda i: (sign * lengths[i], i))[:n]
    elif s.method == "difficulty":
        chosen = _by_difficulty(cfg, rows, traces, detail, report, n)
    else:
        if s.diversity == "keywords":
            groups: list[Any] = [strategy_tags(t) for t in traces]
            for d, g in zip(detail, groups):
                d["strategies"] = list(g)
            report["pool_strategies"] = dict(Counter(t for g in groups for t in g).most_common())
        else:
            groups = kmeans([bigram_vector(t) for t in traces], s.clusters, seed)
            for d, g in zip(detail, groups):
                d["cluster"] = g
        chosen = round_robin(groups, n, seed)
        report["pool_groups"] = len(set(map(str, groups)))
        report["selected_groups"] = len({str(groups[i]) for i in chosen})
        if s.diversity == "keywords":
            report["selected_strategies"] = dict(Counter(t for i in chosen for t in groups[i]).most_common())
    return sorted(chosen), report, detail


def _by_difficulty(
    cfg: Config, rows: Numbered, traces: list[str], detail: list[dict[str, Any]], report: dict[str, Any], n: int
) -> list[int]:
    s = cfg.datagen.select
    if s.difficulty_field is not None:
        values = []
        for (line, row), d in zip(rows, detail):
            v = row.get(s.difficulty_field) if isinstance(row, dict) else None
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise DataError("expected a number", file=cfg.datagen.input, line=line, field=s.difficulty_field)
            values.append(float(v))
            d["difficulty"] = float(v)
        return sorted(range(len(rows)), key=lambda i: (-values[i], i))[:n]
    from posttrain.tasks.formats import resolve_verifier
    from posttrain.tasks.verifiers import get_verifier

    verifier = get_verifier(resolve_verifier(cfg.data.verifier, cfg.data.format))
    disagree: list[int] = []
    agree: list[int] = []
    for i, ((line, row), trace) in enumerate(zip(rows, traces)):
        if s.second_answer_field not in row:
            raise DataError("missing the second model's answer", file=cfg.datagen.input, line=line,
                            field=s.second_answer_field)  # fmt: skip
        teacher, second = verifier.extract(trace), verifier.extract(str(row[s.second_answer_field]))
        detail[i].update(teacher_answer=teacher, second_answer=second)
        (disagree if teacher != second else agree).append(i)
    rng = random.Random(cfg.seed)
    rng.shuffle(disagree)
    rng.shuffle(agree)
    report.update(pool_disagree=len(disagree), pool_agree=len(agree))
    chosen = (disagree + agree)[:n]
    report["selected_disagree"] = len(set(chosen) & set(disagree))
    return chosen


def run_select(cfg: Config) -> dict[str, Any]:
    """Choose, write ``kept`` (the SFT set), ``report.json`` and ``summary.json``; the summary."""
    label, rows = read_numbered(cfg.datagen.input, "datagen.input")
    traces = []
    for line, row in rows:
        t = trace_of(row)
        if t is None:
            raise DataError(f"no teacher trace: expected one of {', '.join(TRACE_FIELDS)} or messages",
                            file=label, line=line)  # fmt: skip
        traces.append(t)
    chosen, pool, detail = choose(cfg, rows, traces)
    out, s = cfg.out, cfg.datagen.select
    write_rows(out, "kept", [rows[i][1] for i in chosen], cfg.datagen.output_format)
    summary: dict[str, Any] = {"command": "select", "input": label, "method": s.method, "rows": len(rows),
                               "kept": len(chosen), **pool}  # fmt: skip
    if s.method == "diversity":
        summary["diversity"] = s.diversity
    summary["selected_mean_words"] = round(sum(detail[i]["words"] for i in chosen) / max(len(chosen), 1), 2)
    summary["pool_mean_words"] = round(sum(d["words"] for d in detail) / max(len(detail), 1), 2)
    write_json(out / "report.json", {**summary, "chosen": [detail[i] for i in chosen]})
    write_json(out / "summary.json", summary)
    return summary
