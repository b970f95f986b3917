"""pass@k, maj@k and bootstrap intervals against closed forms and hand-computed values."""

from __future__ import annotations

import random
from math import comb

import numpy as np
import pytest

from posttrain.eval.passk import bootstrap_ci, maj_at_k, maj_at_k_per_problem, mean_pass_at_k, pass_at_k, powers_of_two


def closed_form(n: int, c: int, k: int) -> float:
    return 1.0 - comb(n - c, k) / comb(n, k)


def test_pass_at_k_matches_closed_form_on_random_inputs() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        n = rng.randint(1, 60)
        c = rng.randint(0, n)
        k = rng.randint(1, n)
        assert pass_at_k(n, c, k) == pytest.approx(closed_form(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_large_n_does_not_overflow() -> None:
    # C(1000, 500) overflows a float; the product form must not
    assert pass_at_k(1000, 3, 500) == pytest.approx(closed_form(1000, 3, 500), abs=1e-12)


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (4, 1, 1, 0.25),  # pass@1 is the fraction correct
        (10, 3, 1, 0.3),
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (6, 1, 3, 0.5),  # 1 - C(5,3)/C(6,3) = 1 - 10/20
        (4, 2, 4, 1.0),  # k = n with any correct sample
        (4, 0, 4, 0.0),  # k = n with none
    ],
)
def test_pass_at_k_hand_computed(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("n", "k"), [(1, 1), (8, 1), (8, 3), (8, 8), (100, 64)])
def test_pass_at_k_edges(n: int, k: int) -> None:
    assert pass_at_k(n, 0, k) == 0.0
    assert pass_at_k(n, n, k) == 1.0
    # fewer than k wrong samples: every k-subset holds a correct one
    assert pass_at_k(n, n - k + 1, k) == 1.0


@pytest.mark.parametrize(
    ("n", "c", "k", "message"),
    [
        (4, 1, 5, "k <= n"),
        (4, 1, 0, "k >= 1"),
        (4, 1, -2, "k >= 1"),
        (4, -1, 2, "between 0 and n"),
        (4, 5, 2, "between 0 and n"),
    ],
)
def test_pass_at_k_rejects_bad_input(n: int, c: int, k: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pass_at_k(n, c, k)


def test_powers_of_two() -> None:
    assert powers_of_two(1) == [1]
    assert powers_of_two(8) == [1, 2, 4, 8]
    assert powers_of_two(10) == [1, 2, 4, 8]
    assert powers_of_two(0) == []


def test_mean_pass_at_k_with_mixed_n() -> None:
    # (4, 1): pass@1 0.25, pass@2 0.5; (2, 2): 1, 1; (8, 0): 0, 0
    got = mean_pass_at_k([(4, 1), (2, 2), (8, 0)], [1, 2])
    assert got == {1: pytest.approx(1.25 / 3), 2: pytest.approx(1.5 / 3)}


def test_mean_pass_at_k_rejects_k_above_a_problems_n() -> None:
    with pytest.raises(ValueError, match="problem 1"):
        mean_pass_at_k([(8, 1), (2, 1)], [4])
    with pytest.raises(ValueError):
        mean_pass_at_k([], [1])


def test_maj_at_k_clear_majority() -> None:
    right = [("4", True)] * 3 + [("5", False)]
    wrong = [("7", False)] * 3 + [("4", True)]
    assert maj_at_k([right], k=4) == 1.0
    assert maj_at_k([wrong], k=4) == 0.0
    assert maj_at_k([right, wrong], k=4) == 0.5


def test_maj_at_k_tie_is_split_exactly() -> None:
    assert maj_at_k([[("4", True), ("5", False)]], k=2) == 0.5
    # three-way tie with one right answer
    assert maj_at_k([[("a", False), ("b", True), ("c", False)]], k=3) == pytest.approx(1 / 3)


def test_maj_at_k_none_does_not_vote() -> None:
    # two unparsed samples would outvote the single answer if None voted
    assert maj_at_k([[(None, False), (None, False), ("4", True)]], k=3) == 1.0
    # a draw with no answer at all is wrong
    assert maj_at_k([[(None, False), (None, False)]], k=2) == 0.0


def test_maj_at_k_answer_is_correct_if_any_carrier_is() -> None:
    assert maj_at_k([[("4", False), ("4", True), ("5", False)]], k=3) == 1.0


def test_maj_at_k_k1_equals_pass_at_1() -> None:
    # a single vote is correct exactly when the sample is
    problem = [("1", True), ("2", False), ("3", False), (None, False)]
    assert maj_at_k([problem], k=1) == pytest.approx(0.25)


def test_maj_at_k_hand_computed_subsets() -> None:
    # answers a, a, b with a right; k = 2 subsets: {a,a} -> 1, {a,b} -> 1/2 (twice); mean 2/3
    assert maj_at_k([[("a", True), ("a", True), ("b", False)]], k=2) == pytest.approx(2 / 3)


def test_maj_at_k_random_draws_close_to_exact_and_seeded() -> None:
    rng = random.Random(1)
    problem = [(str(rng.randint(0, 3)), False) for _ in range(16)]
    problem = [(a, a == "0") for a, _ in problem]
    exact = maj_at_k([problem], k=5, draws=10**6)  # C(16, 5) = 4368 subsets: enumerated
    sampled = maj_at_k([problem], k=5, draws=2000, seed=3)
    assert sampled == pytest.approx(exact, abs=0.05)
    assert sampled == maj_at_k([problem], k=5, draws=2000, seed=3)


def test_maj_at_k_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="k <= n"):
        maj_at_k([[("4", True), ("5", False)]], k=3)
    with pytest.raises(ValueError):
        maj_at_k([[("4", True)]], k=0)
    with pytest.raises(ValueError):
        maj_at_k([], k=1)


def test_bootstrap_ci_contains_mean_and_narrows_with_more_problems() -> None:
    rng = np.random.default_rng(0)
    small = rng.binomial(1, 0.4, size=40).astype(float).tolist()
    large = rng.binomial(1, 0.4, size=4000).astype(float).tolist()
    lo_s, hi_s = bootstrap_ci(small, seed=1)
    lo_l, hi_l = bootstrap_ci(large, seed=1)
    assert lo_s <= float(np.mean(small)) <= hi_s
    assert lo_l <= float(np.mean(large)) <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3  # width shrinks like 1/sqrt(problems)


def test_bootstrap_ci_is_seeded_and_degenerate_for_constant_scores() -> None:
    values = [0.1, 0.5, 0.9, 0.2, 0.7]
    assert bootstrap_ci(values, seed=4) == bootstrap_ci(values, seed=4)
    assert bootstrap_ci([0.5] * 10) == (0.5, 0.5)
    with pytest.raises(ValueError):
        bootstrap_ci([])
    with pytest.raises(ValueError):
        bootstrap_ci(values, level=1.0)


def test_pass_at_k_closed_form_at_the_edges_on_random_n_and_k() -> None:
    rng = random.Random(7)
    for _ in range(300):
        n = rng.randint(1, 300)
        k = rng.randint(1, n)
        assert pass_at_k(n, 0, k) == closed_form(n, 0, k) == 0.0
        assert pass_at_k(n, n, k) == closed_form(n, n, k) == 1.0
        with pytest.raises(ValueError, match="k <= n"):
            pass_at_k(n, rng.randint(0, n), n + rng.randint(1, 5))


@pytest.mark.parametrize(
    ("problem", "k", "expected"),
    [
        # two right and two wrong answers tied 2-2 at k = 4: the vote is right half the time
        ([("a", True), ("a", True), ("b", False), ("b", False)], 4, 0.5),
        # a 1-1-1-1 tie with one right answer among four
        ([("a", True), ("b", False), ("c", False), ("d", False)], 4, 0.25),
        # ties between two wrong answers score 0, not a half
        ([("b", False), ("b", False), ("c", False), ("c", False)], 4, 0.0),
        # unparsed samples never break or make a tie
        ([("a", True), ("b", False), (None, False), (None, False)], 4, 0.5),
        # k = 2 over a, a, b, b (a right): pairs {a,a} 1, {b,b} 0, four mixed pairs 1/2 -> 3/6
        ([("a", True), ("a", True), ("b", False), ("b", False)], 2, 0.5),
    ],
)
def test_maj_at_k_ties(problem: list[tuple[str | None, bool]], k: int, expected: float) -> None:
    assert maj_at_k([problem], k=k) == pytest.approx(expected)


def test_maj_at_k_per_problem_is_what_maj_at_k_averages() -> None:
    rng = random.Random(3)
    problems = [[(str(rng.randint(0, 2)), False) for _ in range(12)] for _ in range(5)]
    problems = [[(a, a == "0") for a, _ in row] for row in problems]
    per = maj_at_k_per_problem(problems, k=5, draws=300, seed=2)
    assert len(per) == 5 and all(0.0 <= v <= 1.0 for v in per)
    assert maj_at_k(problems, k=5, draws=300, seed=2) == sum(per) / len(per)


def test_weighted_bootstrap_is_a_ratio_of_sums() -> None:
    # per-example mean NLL 1.0 over 1 token and 3.0 over 99 tokens: the token mean is 2.98
    lo, hi = bootstrap_ci([1.0, 3.0], weights=[1.0, 99.0], iters=2000, seed=0)
    assert 1.0 <= lo <= 2.98 <= hi <= 3.0
    assert bootstrap_ci([2.0, 2.0, 2.0], weights=[1.0, 5.0, 9.0]) == (2.0, 2.0)
    with pytest.raises(ValueError, match="weights"):
        bootstrap_ci([1.0, 2.0], weights=[1.0])
    # unweighted results are unchanged by the weights option
    values = [0.1, 0.5, 0.9, 0.2, 0.7]
    assert bootstrap_ci(values, seed=4) == bootstrap_ci(values, seed=4, weights=None)
