"""Which SFT checkpoint will do best after RL: predictors, rankings, Spearman. Pure, no model.

Kang, Kuchnik, Padthe et al. 2025, "Quagmires in SFT-RL Post-Training: When High
SFT Scores Mislead and What to Use Instead" (arXiv:2510.01624) find that post-SFT
pass@1 predicts post-RL performance poorly, and that two quantities predict it
much better (Spearman and R² up to 0.5 higher):

- the generalisation loss: the SFT model's NLL on held-out reasoning
  demonstrations (lower is better; post-RL performance peaks near its minimum);
- pass@k at large k (16 to 64 and more), from many samples per problem: how much
  of the answer space RL can still reach.

``predict`` ranks checkpoints by each predictor and says which it trusts. The
paper gives no rule for when the two disagree, so the rule here is statistical
and stated in the report: trust the predictor that separates more pairs of
checkpoints beyond their 95% bootstrap intervals, because a ranking inside the
noise predicts nothing. pass@k at large k saturates near 1 on easy problems, and
held-out NLL is comparable only across checkpoints with one tokenizer; both cases
show up as (or are checked for) an unusable predictor.

Spearman's rho uses average ranks for ties; its p-value is exact by permutation
for up to 8 checkpoints and Monte Carlo above.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np


def ranks(values: list[float], higher_is_better: bool = True) -> list[float]:
    """1 = best; tied values share the average of their ranks.

    >>> ranks([0.2, 0.9, 0.2])
    [2.5, 1.0, 2.5]
    """
    order = sorted(range(len(values)), key=lambda i: -values[i] if higher_is_better else values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for t in range(i, j + 1):
            out[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson's r of average ranks); None when undefined.

    >>> spearman([1, 2, 3], [10, 30, 20])
    0.5
    """
    if len(x) != len(y):
        raise ValueError(f"spearman needs two lists of the same length, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return None
    rx, ry = np.asarray(ranks(list(x))), np.asarray(ranks(list(y)))
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((dx * dx).sum() * (dy * dy).sum()))
    # a constant list has no ranking to agree with
    return None if denom == 0 else round(float((dx * dy).sum()) / denom, 12)


def spearman_pvalue(x: list[float], y: list[float], draws: int = 20000, seed: int = 0) -> float | None:
    """Two-sided p-value of Spearman's rho under random pairing of x and y."""
    rho = spearman(x, y)
    if rho is None:
        return None
    rx, ry = np.asarray(ranks(list(x))), np.asarray(ranks(list(y)))
    n = len(rx)
    if n <= 8:
        perms = np.array(list(itertools.permutations(range(n))))
    else:
        rng = np.random.default_rng(seed)
        perms = np.argsort(rng.random((draws, n)), axis=1)
    dx, dy = rx - rx.mean(), ry - ry.mean()
    rhos = dy[perms] @ dx / math.sqrt(float((dx @ dx) * (dy @ dy)))
    return float(np.mean(np.abs(rhos) >= abs(rho) - 1e-9))


@dataclass(frozen=True)
class Predictor:
    name: str
    values: dict[str, float]  # checkpoint -> value
    cis: dict[str, tuple[float, float] | None]
    higher_is_better: bool

    def ranking(self) -> dict[str, float]:
        names = list(self.values)
        return dict(zip(names, ranks([self.values[n] for n in names], self.higher_is_better)))

    def separated_pairs(self) -> int:
        """Pairs of checkpoints whose intervals do not overlap: orderings the data supports."""
        count = 0
        for a, b in itertools.combinations(self.values, 2):
            ca, cb = self.cis.get(a), self.cis.get(b)
            if ca is not None and cb is not None and (ca[1] < cb[0] or cb[1] < ca[0]):
                count += 1
        return count


def large_k(results: dict[str, dict[str, Any]], wanted: int = 0) -> int:
    """``wanted`` when set, else the largest k every checkpoint has pass@k for."""
    shared = set.intersection(*(set(int(k) for k in r.get("pass_at_k", {})) for r in results.values()))
    if wanted:
        if wanted not in shared:
            raise ValueError(f"pass@{wanted} is missing for some checkpoint (have k in {sorted(shared)})")
        return wanted
    if not shared:
        raise ValueError("no k has pass@k for every checkpoint")
    return max(shared)


def _ci(value: Any) -> tuple[float, float] | None:
    return (float(value[0]), float(value[1])) if isinstance(value, (list, tuple)) and len(value) == 2 else None


def predictors(results: dict[str, dict[str, Any]], k: int) -> tuple[dict[str, Predictor], list[str]]:
    """pass@1 (the baseline), pass@k and held-out NLL as ``Predictor``s, and notes on any left out."""
    names, notes = list(results), []
    out = {
        "pass@1": Predictor("post-SFT pass@1", {n: results[n]["pass_at_k"]["1"] for n in names},
                            {n: _ci(results[n].get("pass_at_k_ci", {}).get("1")) for n in names}, True),
        f"pass@{k}": Predictor(f"pass@{k}", {n: results[n]["pass_at_k"][str(k)] for n in names},
                               {n: _ci(results[n].get("pass_at_k_ci", {}).get(str(k))) for n in names}, True),
    }  # fmt: skip
    if k < 16:
        notes.append(f"k = {k} is small for the pass@k predictor: the paper's large k is 16 to 64 or more.")
    nll = {n: results[n].get("heldout_nll") for n in names}
    tokenizers = {results[n].get("tokenizer_hash") for n in names}
    if any(v is None for v in nll.values()):
        notes.append("held-out NLL is missing for some checkpoint (the data has no demonstrations): not used.")
    elif len(tokenizers) > 1:
        notes.append("the checkpoints use different tokenizers, so per-token held-out NLL is not comparable: not used.")
    else:
        cis = {n: _ci(results[n].get("heldout_nll_ci")) for n in names}
        out["heldout_nll"] = Predictor(
            "held-out NLL", {n: float(v) for n, v in nll.items() if v is not None}, cis, False
        )
    return out, notes


def _order(ranking: dict[str, float]) -> list[str]:
    return sorted(ranking, key=lambda n: ranking[n])


def _tops(ranking: dict[str, float]) -> set[str]:
    """The checkpoints sharing the best rank."""
    best = min(ranking.values())
    return {n for n, r in ranking.items() if r == best}


def _trust(preds: dict[str, Predictor], k: int) -> tuple[str, str]:
    """(key of the trusted predictor, why) between pass@k and held-out NLL."""
    pairs = math.comb(len(preds["pass@1"].values), 2)
    candidates = [key for key in (f"pass@{k}", "heldout_nll") if key in preds]
    sep = {key: preds[key].separated_pairs() for key in candidates}
    said = "; ".join(f"{preds[key].name} separates {sep[key]} of {pairs} pairs of checkpoints" for key in candidates)
    if len(candidates) == 1:
        key = candidates[0]
        return key, f"{preds[key].name} is the only predictor available here ({said})."
    a, b = candidates
    if sep[a] == sep[b]:
        # equal evidence: the pass@k ranking, which the paper finds robust across data mixtures
        key, why = a, "they separate equally many, so the ranking follows pass@k"
    else:
        key = a if sep[a] > sep[b] else b
        why = f"{preds[key].name} orders more of them beyond noise"
    tops = {c: _tops(preds[c].ranking()) for c in candidates}
    agree = (
        f"both put {' = '.join(sorted(tops[a] & tops[b]))} first"
        if tops[a] & tops[b]
        else f"they disagree on the top: {preds[a].name} picks {' = '.join(sorted(tops[a]))}, "
        f"{preds[b].name} picks {' = '.join(sorted(tops[b]))}"
    )
    return key, f"{said} beyond their 95% bootstrap intervals; {why}. {agree[0].upper()}{agree[1:]}."


def predict(results: dict[str, dict[str, Any]], wanted_k: int = 0) -> dict[str, Any]:
    """Rank SFT checkpoints by predicted post-RL performance; ``results`` are their eval records."""
    if len(results) < 2:
        raise ValueError("ranking needs at least two checkpoints")
    k = large_k(results, wanted_k)
    preds, notes = predictors(results, k)
    trusted, reason = _trust(preds, k)
    predicted = _order(preds[trusted].ranking())
    by_pass1 = _order(preds["pass@1"].ranking())
    if not _tops(preds["pass@1"].ranking()) & _tops(preds[trusted].ranking()):
        reason += (
            f" Post-SFT pass@1 would pick {by_pass1[0]} instead; per Kang et al. 2025 that is the choice to distrust."
        )
    rho = {key: spearman([p.ranking()[n] for n in p.values], [preds[trusted].ranking()[n] for n in p.values])
           for key, p in preds.items()}  # fmt: skip
    return {
        "large_k": k,
        "predicted_order": predicted,
        "trusted": trusted,
        "reason": reason,
        "notes": notes,
        "predictors": {
            key: {
                "name": p.name,
                "values": p.values,
                "ci": {n: list(c) if c else None for n, c in p.cis.items()},
                "ranks": p.ranking(),
                "higher_is_better": p.higher_is_better,
                "separated_pairs": p.separated_pairs(),
                "spearman_with_prediction": rho[key],
            }
            for key, p in preds.items()
        },
    }


def _cell(entry: dict[str, Any], name: str) -> str:
    value, ci, rank = entry["values"][name], entry["ci"].get(name), entry["ranks"][name]
    interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    return f"{value:.3f}{interval} ({rank:g})"


def format_prediction(prediction: dict[str, Any]) -> str:
    """The markdown table and verdict of ``predict``: each predictor's ranking next to post-SFT pass@1."""
    preds = prediction["predictors"]
    keys = list(preds)
    order = prediction["predicted_order"]
    header = ["checkpoint", *(preds[key]["name"] + " [CI] (rank)" for key in keys), "predicted rank"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in order:
        cells = [name.replace("|", "\\|"), *(_cell(preds[key], name) for key in keys), str(order.index(name) + 1)]
        lines.append("| " + " | ".join(cells) + " |")
    trusted = preds[prediction["trusted"]]["name"]
    parts = [
        "\n".join(lines),
        f"**Predicted best after RL: {order[0]}.** Trusted predictor: {trusted}. {prediction['reason']}",
        "Ranks: 1 = best (highest pass@k, lowest held-out NLL); ties share the mean rank. pass@k is the "
        "unbiased estimator over n samples per problem; held-out NLL is the mean per-token loss on held-out "
        "demonstrations; intervals are 95% bootstrap intervals over problems (examples for the NLL). "
        "Predictors follow Kang et al. 2025 (arXiv:2510.01624): held-out loss and pass@large-k predict post-RL "
        "performance better than post-SFT pass@1.",
    ]
    parts += [f"Note: {note}" for note in prediction["notes"]]
    return "\n\n".join(parts)
