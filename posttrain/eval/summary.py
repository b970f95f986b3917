"""From checked samples to the numbers of ``eval.json``: pure, no model.

A problem counts towards pass@k, maj@k and greedy accuracy only when every one
of its checks (its n samples and its greedy completion) finished. A check that
timed out or raised says nothing about the answer, and scoring it 0 (what a
swallowed exception does) would make a slow verifier look like a bad model. Such
problems are listed under ``unscored_problems`` and counted, and the scores are
over the rest; ``num_scored_problems`` says how many that is.

Completion lengths do not depend on checking, so they cover every problem.
Intervals are percentile bootstraps over problems (``bootstrap_ci``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from posttrain.eval.checking import Check
from posttrain.eval.diversity import diversity_summary
from posttrain.eval.passk import bootstrap_ci, maj_at_k_per_problem, pass_at_k, powers_of_two

# unscored problems listed in full in eval.json; the count is always complete
_LISTED = 50


@dataclass(frozen=True)
class Sample:
    text: str
    num_tokens: int  # completion tokens, including the stop token
    finish_reason: str  # "stop" or "length"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _ci(values: list[float], seed: int, weights: list[float] | None = None) -> list[float]:
    return list(bootstrap_ci(values, seed=seed, weights=weights))


def _failures(ids: Sequence[str], checks: Sequence[Sequence[Check]], greedy: Sequence[Check]) -> dict[str, Any]:
    """Counts of failed checks and the problems they leave unscored."""
    counts = {"timeout": 0, "error": 0, "skipped": 0}
    unscored: list[dict[str, Any]] = []
    for pid, row, g in zip(ids, checks, greedy):
        failed = [c for c in [*row, g] if c.status != "ok"]
        for c in failed:
            counts[c.status] += 1
        if failed:
            first = next((c for c in failed if c.status != "skipped"), failed[0])
            unscored.append(
                {
                    "id": pid,
                    "timeouts": sum(c.status == "timeout" for c in failed),
                    "errors": sum(c.status == "error" for c in failed),
                    "error": first.error,
                }
            )
    return {
        "check_timeouts": counts["timeout"],
        "check_errors": counts["error"],
        "checks_skipped": counts["skipped"],
        "num_unscored_problems": len(unscored),
        "unscored_problems": unscored[:_LISTED],
    }


def _scores(checks: list[Sequence[Check]], greedy: list[Check], n: int, seed: int) -> dict[str, Any]:
    """pass@k, maj@k and greedy accuracy (with intervals) over fully checked problems."""
    if not checks:
        empty: dict[str, Any] = {}
        return {"pass_at_k": empty, "pass_at_k_ci": {}, "maj_at_k": {}, "maj_at_k_ci": {},
                "greedy_accuracy": None, "greedy_accuracy_ci": None}  # fmt: skip
    ks = powers_of_two(n)
    counts = [sum(c.score > 0 for c in row) for row in checks]
    votes = [[(c.answer, c.score > 0) for c in row] for row in checks]
    out: dict[str, Any] = {"pass_at_k": {}, "pass_at_k_ci": {}, "maj_at_k": {}, "maj_at_k_ci": {}}
    for k in ks:
        per_problem = [pass_at_k(n, c, k) for c in counts]
        out["pass_at_k"][str(k)] = _mean(per_problem)
        out["pass_at_k_ci"][str(k)] = _ci(per_problem, seed)
        maj = maj_at_k_per_problem(votes, k, seed=seed)
        out["maj_at_k"][str(k)] = sum(maj) / len(maj)
        out["maj_at_k_ci"][str(k)] = _ci(maj, seed)
    right = [float(g.score > 0) for g in greedy]
    out["greedy_accuracy"] = _mean(right)
    out["greedy_accuracy_ci"] = _ci(right, seed)
    return out


def summarize(
    ids: Sequence[str],
    samples: Sequence[Sequence[Sample]],
    checks: Sequence[Sequence[Check]],
    greedy: Sequence[Check],
    seed: int,
) -> dict[str, Any]:
    """The evaluation record of one model: ``samples[p][i]`` and ``checks[p][i]`` for sample i of problem p.

    Every problem must have the same number n of samples; pass@k and maj@k are
    reported for every power of two k <= n.
    """
    if not samples:
        raise ValueError("an evaluation over no problems is undefined")
    n = len(samples[0])
    if any(len(row) != n for row in samples) or any(len(row) != n for row in checks):
        raise ValueError("every problem needs the same number of samples and checks")
    ok = [p for p in range(len(samples)) if all(c.status == "ok" for c in [*checks[p], greedy[p]])]
    out = _scores([checks[p] for p in ok], [greedy[p] for p in ok], n, seed)
    lengths = [_mean([s.num_tokens for s in row]) for row in samples]
    out["mean_completion_tokens"] = _mean(lengths)
    out["mean_completion_tokens_ci"] = _ci(lengths, seed)
    out["truncated_frac"] = _mean([_mean([s.finish_reason == "length" for s in row]) for row in samples])
    out["num_problems"] = len(samples)
    out["diversity"] = diversity_summary(
        [[s.text for s in row] for row in samples], [[c.answer for c in row] for row in checks], seed
    )  # posttrain.eval.diversity: distinct-n, distinct answers, pairwise similarity per problem
    out["num_scored_problems"] = len(ok)
    out["samples_per_problem"] = n
    out.update(_failures(ids, checks, greedy))
    return out


def heldout_summary(terms: list[tuple[float, int]] | None, seed: int) -> dict[str, Any]:
    """Mean per-token NLL of held-out demonstrations from per-example (NLL sum, tokens), with its interval."""
    if not terms:
        return {"heldout_nll": None, "heldout_nll_ci": None, "heldout_demos": 0}
    sums, tokens = [s for s, _ in terms], [t for _, t in terms]
    per_example = [s / t if t else 0.0 for s, t in terms]
    return {
        "heldout_nll": sum(sums) / sum(tokens),
        "heldout_nll_ci": _ci(per_example, seed, weights=[float(t) for t in tokens]),
        "heldout_demos": len(terms),
    }
