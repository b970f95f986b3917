"""From verdicts to decisions and rewards: the position-bias rule and the win rate in a group.

**Both orders** (J1, Whitehouse et al. 2025, Section 2.2; METHODS.md "LLM judges"): a pair
(x, y, z) is judged as (A=y, B=z) and as (A=z, B=y). A judge with position bias picks
the same *slot* both times; only when the two verdicts name the same *response* does
the verdict count. ``agreed`` returns that response, or None (inconsistent, or either
verdict missing).

**Win rate in a group**: GRPO needs one reward per sample. For the G samples of one
prompt, every unordered pair (i, k) is judged in both orders; an agreed verdict is a win
for one and a loss for the other; a pair without agreement is left out (not a tie, not a
loss). Sample i's reward is its wins over its decided pairs, and None (a missing score,
never 0) when none of its pairs was decided. Against a reference answer the same rule
applies to the one pair (sample, reference): 1 a win, 0 a loss, None undecided.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Literal

from posttrain.judges.parse import Side

# judge(i, k) -> the verdict with sample i shown as A and sample k as B
Verdicts = Callable[[int, int], Side | None]
Won = Literal["first", "second"]  # which of the pair's two responses both orders picked


def agreed(first: Side | None, swapped: Side | None) -> Won | None:
    """The response both orders picked: ``"first"`` (A in the first order) or ``"second"``; None otherwise.

    ``first`` is the verdict with the first response as A, ``swapped`` with it as B.
    """
    if first is None or swapped is None:
        return None
    if first == "A" and swapped == "B":
        return "first"
    if first == "B" and swapped == "A":
        return "second"
    return None  # the same slot both times: position, not content, decided


@dataclass
class PairTally:
    """Counts over judged pairs, for the metrics: parsed verdicts, and pairs whose two orders agree."""

    verdicts: int = 0  # judge outputs read
    unparsed: int = 0  # of those, no verdict could be read
    pairs: int = 0  # pairs with both verdicts parsed
    consistent: int = 0  # of those, the two orders picked the same response

    def add(self, first: Side | None, swapped: Side | None) -> Won | None:
        self.verdicts += 2
        self.unparsed += (first is None) + (swapped is None)
        if first is not None and swapped is not None:
            self.pairs += 1
            won = agreed(first, swapped)
            self.consistent += won is not None
            return won
        return None


def group_win_rates(size: int, verdict: Verdicts, tally: PairTally | None = None) -> list[float | None]:
    """Each of ``size`` samples' share of wins over its decided pairs, both orders of every pair judged.

    ``verdict(i, k)`` is the judge's verdict with sample i as A and sample k as B.
    """
    tally = tally if tally is not None else PairTally()
    wins, decided = [0] * size, [0] * size
    for i, k in combinations(range(size), 2):
        won = tally.add(verdict(i, k), verdict(k, i))
        if won is None:
            continue
        decided[i] += 1
        decided[k] += 1
        wins[i if won == "first" else k] += 1
    return [wins[i] / decided[i] if decided[i] else None for i in range(size)]


def against_reference(first: Side | None, swapped: Side | None) -> float | None:
    """A sample judged against the reference answer, sample as A first: 1 a win, 0 a loss, None undecided."""
    won = agreed(first, swapped)
    return None if won is None else float(won == "first")


def paired_rewards(correct: Sequence[float], partner: Sequence[float] | None) -> list[float]:
    """J1's both-orders reward for one order's G samples: sample j earns 1 only when it and sample j
    of the other order are both right; without the other order (dropped, on another rank) its own."""
    if partner is None or len(partner) != len(correct):
        return [float(c) for c in correct]
    return [float(c > 0 and p > 0) for c, p in zip(correct, partner)]
