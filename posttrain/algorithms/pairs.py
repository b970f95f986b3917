"""Turning a prompt's scored samples into preference pairs, for online and semi-online DPO.

Each rule is a pure function of one prompt's scores (one per sampled response) and
a ``random.Random``; it returns that prompt's pairs and, when it can make none, why.
Rules, after "Bridging Offline and Online Reinforcement Learning for LLMs"
(Lanchantin et al. 2025, arXiv 2506.21495):

- ``random``: a random correct response against a random incorrect one (verifiable
  tasks). Prompts whose samples are all correct or all wrong carry no preference
  and are skipped (and counted).
- ``best_worst``: the highest against the lowest score (a reward model's). Ties for
  the best or the worst place are broken at random, so no position is favoured; a
  prompt whose scores are all equal is skipped as a tie.
- ``group`` (GroupDPO): every correct x incorrect pair, each weighted 1/k for the
  prompt's k pairs, so the loss averages over a prompt's pairs and every prompt
  with pairs weighs as much as under ``random``.

"Correct" means a score above ``CORRECT_ABOVE`` (verifiers score 1.0 or 0.0).

- ``divpo`` (Lanchantin et al. 2025, "Diverse Preference Optimization", arXiv
  2501.18101): split the pool by quality, then the chosen is the most diverse
  high-quality response and the rejected the least diverse low-quality one
  (``divpo_pair``; it also needs each response's diversity, so it is not in
  ``PAIR_RULES``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

CORRECT_ABOVE = 0.5

Skip = Literal["all_correct", "all_wrong", "tie"]


@dataclass(frozen=True)
class Pair:
    chosen: int  # index of the chosen sample within its prompt's group
    rejected: int
    weight: float = 1.0


@dataclass
class PairSet:
    """Pairs of many prompts: (prompt index, Pair), and how many prompts each reason skipped."""

    pairs: list[tuple[int, Pair]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=lambda: {"all_correct": 0, "all_wrong": 0, "tie": 0})


def _split(scores: Sequence[float]) -> tuple[list[int], list[int]]:
    correct = [i for i, s in enumerate(scores) if s > CORRECT_ABOVE]
    wrong = [i for i, s in enumerate(scores) if s <= CORRECT_ABOVE]
    return correct, wrong


def _verifiable_skip(correct: list[int], wrong: list[int]) -> Skip | None:
    if not wrong:
        return "all_correct"
    if not correct:
        return "all_wrong"
    return None


def random_pair(scores: Sequence[float], rng: random.Random) -> tuple[list[Pair], Skip | None]:
    correct, wrong = _split(scores)
    skip = _verifiable_skip(correct, wrong)
    if skip is not None:
        return [], skip
    return [Pair(rng.choice(correct), rng.choice(wrong))], None


def best_worst_pair(scores: Sequence[float], rng: random.Random) -> tuple[list[Pair], Skip | None]:
    hi, lo = max(scores), min(scores)
    if hi == lo:
        return [], "tie"
    best = rng.choice([i for i, s in enumerate(scores) if s == hi])
    worst = rng.choice([i for i, s in enumerate(scores) if s == lo])
    return [Pair(best, worst)], None


def group_pairs(scores: Sequence[float], rng: random.Random) -> tuple[list[Pair], Skip | None]:
    correct, wrong = _split(scores)
    skip = _verifiable_skip(correct, wrong)
    if skip is not None:
        return [], skip
    weight = 1.0 / (len(correct) * len(wrong))
    return [Pair(c, w, weight) for c in correct for w in wrong], None


def _divpo_split(
    scores: Sequence[float], split: str, threshold: float, rng: random.Random
) -> tuple[list[int], list[int]]:
    """The high- and low-quality sets of a pool: above / at-or-below ``threshold`` (``absolute``), or the
    top and bottom ``threshold`` share by reward (``quantile``, ties ranked at random), the high set kept
    to responses strictly better than every low one so that no pair prefers an equal reward."""
    if split == "absolute":
        return [i for i, s in enumerate(scores) if s > threshold], [i for i, s in enumerate(scores) if s <= threshold]
    k = max(1, int(threshold * len(scores)))
    order = sorted(range(len(scores)), key=lambda i: (scores[i], rng.random()))
    low, high = order[:k], order[-k:]
    worst_high = max(scores[i] for i in low)
    return [i for i in high if scores[i] > worst_high], low


def divpo_pair(
    scores: Sequence[float],
    diversity: Sequence[float],
    split: str,
    threshold: float,
    rng: random.Random,
) -> tuple[list[Pair], Skip | None]:
    """DivPO's pair of one pool: the most diverse of the high set against the least diverse of the low set.

    ``diversity[i]`` is response i's diversity (larger: rarer; see ``posttrain.eval.diversity``).
    Ties for either place are broken at random. A pool with no response on one side is
    skipped as ``all_correct`` (nothing low), ``all_wrong`` (nothing high) or, in the
    quantile split, ``tie`` (all rewards equal).
    """
    high, low = _divpo_split(scores, split, threshold, rng)
    if not high or not low:
        if split == "quantile":
            return [], "tie"
        return [], "all_correct" if not low else "all_wrong"
    top = max(diversity[i] for i in high)
    bottom = min(diversity[i] for i in low)
    chosen = rng.choice([i for i in high if diversity[i] == top])
    rejected = rng.choice([i for i in low if diversity[i] == bottom])
    return [Pair(chosen, rejected)], None


PairRule = Callable[[Sequence[float], random.Random], tuple[list[Pair], "Skip | None"]]

PAIR_RULES: dict[str, PairRule] = {
    "random": random_pair,
    "best_worst": best_worst_pair,
    "group": group_pairs,
}


def build_pairs(
    rule: str,
    scores: Sequence[Sequence[float]],
    rng: random.Random,
    diversity: Sequence[Sequence[float]] | None = None,
    split: str = "absolute",
    threshold: float = CORRECT_ABOVE,
) -> PairSet:
    """Apply ``PAIR_RULES[rule]`` to each prompt's scores (N prompts x G samples).

    ``divpo`` also reads ``diversity`` (one value per sample, N x G) and its quality split.
    """
    out = PairSet()
    for prompt, row in enumerate(scores):
        if rule == "divpo":
            assert diversity is not None, "the divpo rule needs each sample's diversity"
            pairs, skip = divpo_pair(row, diversity[prompt], split, threshold, rng)
        else:
            pairs, skip = PAIR_RULES[rule](row, rng)
        if skip is not None:
            out.skipped[skip] += 1
        out.pairs.extend((prompt, p) for p in pairs)
    return out
