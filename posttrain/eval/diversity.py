"""How varied a model's samples of one prompt are: distinct-n, distinct answers, pairwise similarity.

Post-training tends to sharpen a model's output distribution and so narrow what it
writes (the motivation of DivPO, Lanchantin et al. 2025, arXiv 2501.18101). These
numbers make that visible for any model's evaluation samples, per prompt and then
averaged over prompts:

- **distinct-n** (Li et al. 2016, "A Diversity-Promoting Objective Function for
  Neural Conversation Models"): the number of distinct n-grams among a prompt's
  samples divided by the total number of n-grams in them, n = 1..4. 1.0: no n-gram
  repeats across (or within) the samples; near 0: the samples repeat each other.
  A prompt whose samples hold no n-gram of that order (all shorter) is left out
  of that order's mean.
- **distinct answers**: the number of different final answers (the task's answer
  extraction, ``Task.extract``) among a prompt's samples; samples with no answer
  are not counted as an answer.
- **pairwise similarity**: the mean, over every pair of a prompt's samples, of the
  Jaccard similarity of their token sets |A ∩ B| / |A ∪ B| (1.0: the same tokens;
  two empty samples count as identical). Token sets rather than n-gram overlap
  (self-BLEU) keep it cheap and free of smoothing choices; ``1 - similarity`` is
  a diversity.

Tokens are words and single punctuation or operator characters (``37+48=85`` is
five tokens: ``37 + 48 = 85``), so arithmetic chains are not one "word" each.
Everything here is pure: no model, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import combinations
from typing import Any

from posttrain.eval.passk import bootstrap_ci

_TOKEN = re.compile(r"\w+|[^\w\s]")
ORDERS = (1, 2, 3, 4)


def tokens(text: str) -> list[str]:
    """Lower-cased words and single non-space symbols.

    >>> tokens("37+48=85, Done")
    ['37', '+', '48', '=', '85', ',', 'done']
    """
    return _TOKEN.findall(text.lower())


def ngrams(toks: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Distinct n-grams over all n-grams of a prompt's samples; None when they hold no n-gram."""
    grams = [g for t in texts for g in ngrams(tokens(t), n)]
    return len(set(grams)) / len(grams) if grams else None


def jaccard(a: set[str], b: set[str]) -> float:
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def pairwise_similarity(texts: Sequence[str]) -> float | None:
    """Mean token-set Jaccard similarity over every pair of samples; None with fewer than two."""
    sets = [set(tokens(t)) for t in texts]
    pairs = list(combinations(sets, 2))
    return sum(jaccard(a, b) for a, b in pairs) / len(pairs) if pairs else None


def distinct_answers(answers: Sequence[str | None]) -> int:
    return len({a for a in answers if a is not None})


def _mean_ci(values: list[float], seed: int) -> tuple[float | None, list[float] | None]:
    if not values:
        return None, None
    return sum(values) / len(values), list(bootstrap_ci(values, seed=seed))


def diversity_summary(
    texts: Sequence[Sequence[str]], answers: Sequence[Sequence[str | None]] | None, seed: int = 0
) -> dict[str, Any]:
    """The ``diversity`` record of an evaluation: per-prompt numbers averaged over prompts, with intervals.

    ``texts[p]`` are prompt p's samples, ``answers[p]`` their extracted answers (None:
    not extracted, or no answers known at all).
    """
    out: dict[str, Any] = {"distinct_n": {}, "distinct_n_ci": {}}
    for n in ORDERS:
        per_prompt = [v for v in (distinct_n(row, n) for row in texts) if v is not None]
        mean, ci = _mean_ci(per_prompt, seed)
        out["distinct_n"][str(n)], out["distinct_n_ci"][str(n)] = mean, ci
    sims = [v for v in (pairwise_similarity(row) for row in texts) if v is not None]
    out["pairwise_similarity"], out["pairwise_similarity_ci"] = _mean_ci(sims, seed)
    out["similarity"] = "token-set Jaccard, mean over sample pairs"
    if answers is not None:
        counts = [float(distinct_answers(row)) for row in answers]
        out["distinct_answers"], out["distinct_answers_ci"] = _mean_ci(counts, seed)
    else:
        out["distinct_answers"], out["distinct_answers_ci"] = None, None
    out["samples_per_prompt"] = len(texts[0]) if texts else 0
    return out


# ---------------------------------------------------------------------------
# How diverse each response of a pool is, for DivPO's pair choice
# (Lanchantin et al. 2025, "Diverse Preference Optimization", arXiv 2501.18101, section 2):
# a larger value is a rarer, more diverse response.


def logprob_rarity(logprobs: Sequence[Sequence[float]]) -> list[float]:
    """Model-probability rarity: minus the mean per-token logprob of each response under the policy.

    The paper's "model probability" criterion ranks by how unlikely the policy finds a
    response. The mean per token (not the sum) keeps a long response from looking rare
    for its length alone; an empty response has rarity 0.
    """
    return [-sum(lp) / len(lp) if lp else 0.0 for lp in logprobs]


def word_frequency_rarity(texts: Sequence[str]) -> list[float]:
    """Word-frequency rarity: the mean over a response's distinct tokens of 1 - (share of the pool using it).

    The paper's "word frequency" criterion: a response made of words the rest of the
    pool also uses is common. A token every response holds adds 0, one only this
    response holds adds 1 - 1/N. An empty response has rarity 0.
    """
    sets = [set(tokens(t)) for t in texts]
    n = len(sets)
    share = {w: sum(w in s for s in sets) / n for s in sets for w in s}
    return [sum(1.0 - share[w] for w in s) / len(s) if s else 0.0 for s in sets]


def _ngram_counts(text: str) -> dict[tuple[str, ...], int]:
    toks = tokens(text)
    counts: dict[tuple[str, ...], int] = {}
    for n in (1, 2):
        for g in ngrams(toks, n):
            counts[g] = counts.get(g, 0) + 1
    return counts


def _cosine(a: dict[tuple[str, ...], int], b: dict[tuple[str, ...], int]) -> float:
    if not a or not b:
        return 1.0 if a == b else 0.0
    dot = sum(v * b.get(k, 0) for k, v in a.items())
    norm = (sum(v * v for v in a.values()) * sum(v * v for v in b.values())) ** 0.5
    return dot / norm


def ngram_distance(texts: Sequence[str]) -> list[float]:
    """N-gram distance (``dpo.divpo_criterion=ngram``): each response's mean cosine distance to the others.

    Each response is a bag of its token unigrams and bigrams (counts), not a neural
    embedding (that is ``embedding``, ``posttrain.eval.embedding_diversity``): it needs
    no model and no forward pass, and two responses that share no token are at
    distance 1. A pool of one response gives 0.
    """
    vectors = [_ngram_counts(t) for t in texts]
    out = []
    for i, v in enumerate(vectors):
        others = [1.0 - _cosine(v, w) for j, w in enumerate(vectors) if j != i]
        out.append(sum(others) / len(others) if others else 0.0)
    return out


def format_diversity_table(results: dict[str, dict[str, Any]]) -> str | None:
    """A markdown table of each model's ``diversity`` entry (eval.md); None when no result has one."""
    rows = [(name, r["diversity"]) for name, r in results.items() if r.get("diversity")]
    if not rows:
        return None

    def num(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [
        "### Diversity of the samples, per problem (mean over problems)",
        "",
        "| model | distinct-1 | distinct-2 | distinct-3 | distinct-4 | distinct answers | pairwise similarity |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, d in rows:
        cells = [num(d["distinct_n"].get(str(n))) for n in ORDERS]
        lines.append(
            f"| {name} | " + " | ".join([*cells, num(d["distinct_answers"]), num(d["pairwise_similarity"])]) + " |"
        )
    lines.append("")
    lines.append("Pairwise similarity: token-set Jaccard, mean over sample pairs (lower: more varied).")
    return "\n".join(lines)
