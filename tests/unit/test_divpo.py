"""DivPO's pair choice on hand-made pools, under each diversity criterion and quality split."""

from __future__ import annotations

import random

import pytest

from posttrain.algorithms.pairs import Pair, build_pairs, divpo_pair
from posttrain.config import load_config
from posttrain.errors import ConfigError
from posttrain.eval.diversity import logprob_rarity, ngram_distance, word_frequency_rarity
from posttrain.recipes.online_dpo import scored_pairs


def rng() -> random.Random:
    return random.Random(0)


def test_logprob_rarity_is_minus_the_mean_logprob() -> None:
    assert logprob_rarity([[-1.0, -3.0], [-0.5], []]) == [2.0, 0.5, 0.0]


def test_word_frequency_rarity_by_hand() -> None:
    """Pool "a b", "a c", "a b": shares a 3/3, b 2/3, c 1/3.
    Response 0: (0 + 1/3) / 2 = 1/6; response 1: (0 + 2/3) / 2 = 1/3; response 2 = response 0."""
    got = word_frequency_rarity(["a b", "a c", "a b"])
    assert got == pytest.approx([1 / 6, 1 / 3, 1 / 6])


def test_ngram_distance_by_hand() -> None:
    """Bags of 1- and 2-grams: "x" = {x}, "x" = {x}, "y" = {y}. Distances: x-x 0, x-y 1.
    Means: (0 + 1) / 2, (0 + 1) / 2, (1 + 1) / 2."""
    assert ngram_distance(["x", "x", "y"]) == pytest.approx([0.5, 0.5, 1.0])
    # "a b" = {a, b, (a b)}, "a c" = {a, c, (a c)}: cosine 1/3
    assert ngram_distance(["a b", "a c"]) == pytest.approx([2 / 3, 2 / 3])


def test_chosen_is_the_most_diverse_good_rejected_the_least_diverse_bad() -> None:
    scores = [1.0, 1.0, 0.0, 0.0, 1.0]
    diversity = [0.2, 0.9, 0.5, 0.1, 0.4]
    assert divpo_pair(scores, diversity, "absolute", 0.5, rng()) == ([Pair(1, 3)], None)
    # the same pool by best_worst-style quantile split: top and bottom 40% (2 each) by reward
    # sorted by reward the low side is {2, 3}; the high side two of {0, 1, 4}, the most diverse among them wins
    pairs, skip = divpo_pair(scores, diversity, "quantile", 0.4, rng())
    assert skip is None and pairs[0].rejected == 3 and scores[pairs[0].chosen] == 1.0


def test_divpo_differs_from_reward_only_choice() -> None:
    """With reward-model scores, best_worst takes the top reward; DivPO the rarest response above the bar."""
    scores = [0.9, 0.7, 0.2, 0.1]
    texts = ["the the the", "a fresh idea", "the idea", "the the the the"]
    diversity = word_frequency_rarity(texts)  # shares: the 3/4, idea 2/4, a and fresh 1/4
    assert diversity == pytest.approx([1 / 4, 2 / 3, 3 / 8, 1 / 4])
    pairs, _ = divpo_pair(scores, diversity, "absolute", 0.5, rng())
    assert pairs == [Pair(1, 3)]
    assert build_pairs("best_worst", [scores], rng()).pairs == [(0, Pair(0, 3))]


@pytest.mark.parametrize(
    ("scores", "split", "threshold", "reason"),
    [
        ([1.0, 1.0], "absolute", 0.5, "all_correct"),
        ([0.0, 0.0], "absolute", 0.5, "all_wrong"),
        ([0.3, 0.3, 0.3], "quantile", 0.5, "tie"),
    ],
)
def test_pools_without_both_sides_are_skipped(scores: list[float], split: str, threshold: float, reason: str) -> None:
    assert divpo_pair(scores, [0.0] * len(scores), split, threshold, rng()) == ([], reason)


def test_quantile_split_never_pairs_equal_rewards() -> None:
    """Three right of eight, bottom half: the high side drops any wrong response ranked into the top half."""
    scores = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    for seed in range(20):
        pairs, _ = divpo_pair(scores, list(range(8)), "quantile", 0.5, random.Random(seed))
        assert scores[pairs[0].chosen] == 1.0 and scores[pairs[0].rejected] == 0.0


def test_scored_pairs_maps_diversity_past_missing_scores() -> None:
    """Sample 1 of the first prompt has no reward: the pool is samples 0, 2, 3, with their own diversities."""
    scores: list[float | None] = [1.0, None, 1.0, 0.0, None, 0.0, 1.0, 0.0]
    diversity = [0.1, 9.0, 0.7, 0.3, 0.0, 0.0, 0.0, 0.0]
    pairs, skipped = scored_pairs("divpo", scores, 4, rng(), diversity, ("absolute", 0.5))
    assert pairs[0] == (2, 3, 1.0)
    assert pairs[1][0] == 6 and pairs[1][1] in (5, 7)


def test_quantile_threshold_is_checked() -> None:
    with pytest.raises(ConfigError, match="dpo.divpo_threshold"):
        load_config(None, ["dpo.pairs=divpo", "dpo.divpo_split=quantile", "dpo.divpo_threshold=0.8"])
