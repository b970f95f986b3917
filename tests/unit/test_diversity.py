"""Diversity metrics against values worked out by hand."""

from __future__ import annotations

import pytest

from posttrain.eval.checking import Check
from posttrain.eval.diversity import (
    distinct_answers,
    distinct_n,
    diversity_summary,
    pairwise_similarity,
    tokens,
)
from posttrain.eval.summary import Sample, summarize


def test_tokens_split_symbols() -> None:
    assert tokens("1+2=3\n#3") == ["1", "+", "2", "=", "3", "#", "3"]


def test_distinct_n_by_hand() -> None:
    """Samples "a b a" and "a b c": unigrams a b a a b c -> 3 distinct / 6;
    bigrams (a b) (b a) (a b) (b c) -> 3 distinct / 4; trigrams (a b a) (a b c) -> 2 / 2;
    no 4-gram at all -> None."""
    texts = ["a b a", "a b c"]
    assert distinct_n(texts, 1) == pytest.approx(3 / 6)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(texts, 3) == pytest.approx(1.0)
    assert distinct_n(texts, 4) is None


def test_pairwise_similarity_by_hand() -> None:
    """Sets {a,b}, {a,b}, {c}: pairs 1 (same), 0, 0 -> mean 1/3. {a,b} vs {b,c}: 1/3."""
    assert pairwise_similarity(["a b", "b a", "c"]) == pytest.approx(1 / 3)
    assert pairwise_similarity(["a b", "b c"]) == pytest.approx(1 / 3)
    assert pairwise_similarity(["only one"]) is None
    assert pairwise_similarity(["", ""]) == 1.0  # two empty samples are the same


def test_distinct_answers_ignores_missing() -> None:
    assert distinct_answers(["3", "3", None, "4"]) == 2
    assert distinct_answers([None, None]) == 0


def test_summary_averages_over_prompts() -> None:
    """Prompt 1: identical samples -> distinct-1 2/4, similarity 1, one answer.
    Prompt 2: disjoint samples -> distinct-1 1, similarity 0, two answers. Means: 0.75, 0.5, 1.5."""
    out = diversity_summary([["x y", "x y"], ["p q", "r s"]], [["1", "1"], ["1", "2"]], seed=0)
    assert out["distinct_n"]["1"] == pytest.approx(0.75)
    assert out["pairwise_similarity"] == pytest.approx(0.5)
    assert out["distinct_answers"] == pytest.approx(1.5)
    lo, hi = out["distinct_answers_ci"]
    assert 1.0 <= lo <= 1.5 <= hi <= 2.0
    assert out["distinct_n"]["4"] is None  # no sample holds four tokens


def test_eval_record_carries_diversity() -> None:
    samples = [[Sample("#3", 2, "stop"), Sample("#4", 2, "stop")]]
    checks = [[Check("ok", "3", 1.0), Check("ok", "4", 0.0)]]
    out = summarize(["p"], samples, checks, [Check("ok", "3", 1.0)], seed=0)
    assert out["diversity"]["distinct_answers"] == 2.0
    assert out["diversity"]["pairwise_similarity"] == pytest.approx(1 / 3)  # {#,3} vs {#,4}
