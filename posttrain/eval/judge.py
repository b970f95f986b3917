"""How good is a judge: accuracy on pairs with a known winner, by order, consistency, parse failures.

Each held-out pair (question, chosen, rejected) is judged once per order (pairwise:
chosen as A, then chosen as B; pointwise: each response scored alone). Reported, each as
a share with a 95% Wilson score interval (Wilson 1927, "Probable inference, the law of
succession, and statistical inference"; better than the normal interval near 0 and 1
and for small n):

- ``accuracy``: pairs judged right in **both** orders (J1's position-robust accuracy);
  pointwise: the chosen response scored strictly above the rejected one;
- ``accuracy_ab`` / ``accuracy_ba``: right in that order alone (pairwise);
- ``position_consistency``: pairs whose two verdicts name the same response, over all
  pairs (an unparsed verdict is not consistent); pointwise: ``ties``, pairs scored equal;
- ``parse_failure_rate``: verdicts that could not be read, over all verdicts.

The same numbers per ``subset`` when the rows carry one (RewardBench's local layout).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from posttrain.judges.parse import Mode
from posttrain.judges.rules import agreed

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n; (nan, nan) when n == 0."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def share(k: int, n: int) -> dict[str, float | int]:
    """``{value, lo, hi, k, n}``: a proportion with its 95% Wilson interval."""
    lo, hi = wilson(k, n)
    return {"value": k / n if n else math.nan, "lo": lo, "hi": hi, "k": k, "n": n}


@dataclass(frozen=True)
class PairJudgment:
    """A pair's two verdicts: pairwise, the side picked with chosen as A (``first``) and as B (``second``);
    pointwise, the chosen response's score (``first``) and the rejected one's (``second``). None: unparsed."""

    first: str | float | None
    second: str | float | None
    subset: str | None = None


def _pairwise(rows: Sequence[PairJudgment]) -> dict[str, dict[str, float | int]]:
    n = len(rows)
    both = sum(r.first == "A" and r.second == "B" for r in rows)
    ab = sum(r.first == "A" for r in rows)
    ba = sum(r.second == "B" for r in rows)
    consistent = sum(agreed(r.first, r.second) is not None for r in rows)  # type: ignore[arg-type]
    unparsed = sum((r.first is None) + (r.second is None) for r in rows)
    return {
        "accuracy": share(both, n),
        "accuracy_ab": share(ab, n),
        "accuracy_ba": share(ba, n),
        "position_consistency": share(consistent, n),
        "parse_failure_rate": share(unparsed, 2 * n),
    }


def _pointwise(rows: Sequence[PairJudgment]) -> dict[str, dict[str, float | int]]:
    n = len(rows)
    scored = [(r.first, r.second) for r in rows if r.first is not None and r.second is not None]
    right = sum(float(c) > float(w) for c, w in scored)  # type: ignore[arg-type]
    ties = sum(float(c) == float(w) for c, w in scored)  # type: ignore[arg-type]
    unparsed = sum((r.first is None) + (r.second is None) for r in rows)
    return {"accuracy": share(right, n), "ties": share(ties, n), "parse_failure_rate": share(unparsed, 2 * n)}


def judge_metrics(rows: Sequence[PairJudgment], mode: Mode) -> dict[str, object]:
    """The module docstring's numbers over ``rows``, overall and per subset."""
    fn = _pairwise if mode == "pairwise" else _pointwise
    out: dict[str, object] = {"mode": mode, "pairs": len(rows), **fn(rows)}
    subsets = sorted({r.subset for r in rows if r.subset is not None})
    if subsets:
        out["subsets"] = {s: {"pairs": sum(r.subset == s for r in rows), **fn([r for r in rows if r.subset == s])}
                          for s in subsets}  # fmt: skip
    return out


def summary_line(name: str, m: dict[str, object]) -> str:
    """One line for the console: accuracy and consistency with their intervals."""

    def fmt(key: str) -> str:
        v = m.get(key)
        if not isinstance(v, dict):
            return ""
        return f"{key} {v['value']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]"

    parts = [fmt(k) for k in ("accuracy", "accuracy_ab", "accuracy_ba", "position_consistency", "parse_failure_rate")]
    return f"{name}: {m['pairs']} pairs, " + ", ".join(p for p in parts if p)
