"""Pair construction rules on their edge cases: all correct, all wrong, ties."""

from __future__ import annotations

import random

import pytest

from posttrain.algorithms.pairs import PAIR_RULES, Pair, best_worst_pair, build_pairs, group_pairs, random_pair


def rng(seed: int = 0) -> random.Random:
    return random.Random(seed)


@pytest.mark.parametrize("rule", ["random", "group"])
def test_verifiable_rules_skip_uniform_groups(rule: str) -> None:
    assert PAIR_RULES[rule]([1.0, 1.0, 1.0], rng()) == ([], "all_correct")
    assert PAIR_RULES[rule]([0.0, 0.0, 0.0, 0.0], rng()) == ([], "all_wrong")


def test_random_pair_is_a_correct_against_an_incorrect() -> None:
    scores = [0.0, 1.0, 0.0, 1.0, 0.0]
    seen = set()
    for seed in range(50):
        pairs, skip = random_pair(scores, rng(seed))
        assert skip is None and len(pairs) == 1
        p = pairs[0]
        assert scores[p.chosen] == 1.0 and scores[p.rejected] == 0.0 and p.weight == 1.0
        seen.add((p.chosen, p.rejected))
    assert seen == {(c, w) for c in (1, 3) for w in (0, 2, 4)}  # every combination is drawn
    assert random_pair(scores, rng(7)) == random_pair(scores, rng(7))  # seeded: reproducible


def test_best_worst_pair() -> None:
    assert best_worst_pair([0.2, 0.9, -0.5, 0.1], rng()) == ([Pair(1, 2)], None)
    assert best_worst_pair([0.3, 0.3, 0.3], rng()) == ([], "tie")
    # ties for the top (or bottom) place are broken at random, not by position
    tops = {best_worst_pair([0.9, 0.1, 0.9, 0.1], rng(s))[0][0] for s in range(50)}
    assert {p.chosen for p in tops} == {0, 2} and {p.rejected for p in tops} == {1, 3}
    # verifier scores work too: some correct beats some wrong
    (p,), _ = best_worst_pair([0.0, 1.0], rng())
    assert (p.chosen, p.rejected) == (1, 0)


def test_group_pairs_average_over_all_correct_x_incorrect() -> None:
    pairs, skip = group_pairs([1.0, 0.0, 1.0, 0.0, 0.0], rng())
    assert skip is None
    assert sorted((p.chosen, p.rejected) for p in pairs) == [(0, 1), (0, 3), (0, 4), (2, 1), (2, 3), (2, 4)]
    assert all(p.weight == pytest.approx(1 / 6) for p in pairs)
    assert sum(p.weight for p in pairs) == pytest.approx(1.0)  # a prompt weighs one pair, as under `random`


def test_build_pairs_counts_skipped_prompts() -> None:
    scores = [[1.0, 1.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
    out = build_pairs("random", scores, rng())
    assert out.pairs == [(2, Pair(1, 0))]
    assert out.skipped == {"all_correct": 1, "all_wrong": 2, "tie": 0}
    ties = build_pairs("best_worst", [[0.5, 0.5], [0.1, 0.7]], rng())
    assert ties.skipped["tie"] == 1 and ties.pairs == [(1, Pair(1, 0))]
