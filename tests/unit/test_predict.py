"""Ranking SFT checkpoints for RL: ranks, Spearman, and which predictor is trusted."""

from __future__ import annotations

from typing import Any

import pytest

from posttrain.eval.predict import format_prediction, large_k, predict, ranks, spearman, spearman_pvalue


def test_ranks_average_ties_and_direction() -> None:
    assert ranks([0.2, 0.9, 0.2]) == [2.5, 1.0, 2.5]
    assert ranks([3.0, 1.0, 2.0], higher_is_better=False) == [3.0, 1.0, 2.0]
    assert ranks([5.0, 5.0, 5.0]) == [2.0, 2.0, 2.0]


def test_spearman_hand_computed() -> None:
    # no ties: 1 - 6 sum d^2 / (n (n^2 - 1)); d = (0, 1, -1) -> 1 - 6*2/24 = 0.5
    assert spearman([1, 2, 3], [10, 30, 20]) == pytest.approx(0.5)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties: ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4): Pearson of ranks = 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / (4.5 * 5) ** 0.5)
    assert spearman([1, 1, 1], [1, 2, 3]) is None  # a constant has no ranking
    assert spearman([1], [2]) is None
    with pytest.raises(ValueError):
        spearman([1, 2], [1])


def test_spearman_pvalue_exact_and_monte_carlo() -> None:
    # n = 3, perfect agreement: 2 of the 6 pairings reach |rho| = 1
    assert spearman_pvalue([1, 2, 3], [1, 2, 3]) == pytest.approx(2 / 6)
    x = list(range(12))
    assert spearman_pvalue(x, x) == pytest.approx(0.0, abs=1e-3)  # Monte Carlo above 8
    assert spearman_pvalue([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) > 0.05
    assert spearman_pvalue([1, 1], [1, 2]) is None


def record(pass1: float, pass64: float, nll: float | None, width: float = 0.01) -> dict[str, Any]:
    return {
        "pass_at_k": {"1": pass1, "64": pass64},
        "pass_at_k_ci": {"1": [pass1 - width, pass1 + width], "64": [pass64 - width, pass64 + width]},
        "heldout_nll": nll,
        "heldout_nll_ci": None if nll is None else [nll - width, nll + width],
        "tokenizer_hash": "t",
    }


def test_predict_trusts_the_predictor_that_separates_more_checkpoints() -> None:
    results = {
        # pass@64 at its ceiling cannot order these; held-out NLL can
        "a": record(0.60, 0.99, 0.30, width=0.02),
        "b": record(0.50, 0.99, 0.20, width=0.02),
        "c": record(0.40, 0.98, 0.10, width=0.02),
    }
    p = predict(results)
    assert p["large_k"] == 64
    assert p["trusted"] == "heldout_nll"
    assert p["predicted_order"] == ["c", "b", "a"]
    assert p["predictors"]["heldout_nll"]["separated_pairs"] == 3
    assert p["predictors"]["pass@64"]["separated_pairs"] == 0
    assert p["predictors"]["pass@1"]["spearman_with_prediction"] == pytest.approx(-1.0)
    assert "Post-SFT pass@1 would pick a instead" in p["reason"]
    text = format_prediction(p)
    assert "**Predicted best after RL: c.**" in text
    assert "| c | 0.400 [0.380, 0.420] (3) | 0.980 [0.960, 1.000] (3) | 0.100 [0.080, 0.120] (1) | 1 |" in text


def test_predict_agreement_and_missing_nll() -> None:
    both = {"a": record(0.5, 0.9, 0.2), "b": record(0.4, 0.7, 0.3)}
    p = predict(both)
    assert p["predicted_order"] == ["a", "b"]
    assert "Both put a first" in p["reason"] and "distrust" not in p["reason"]
    no_nll = {"a": record(0.5, 0.6, None), "b": record(0.4, 0.9, None)}
    p = predict(no_nll, wanted_k=64)
    assert p["trusted"] == "pass@64" and "heldout_nll" not in p["predictors"]
    assert p["predicted_order"] == ["b", "a"]
    assert any("held-out NLL is missing" in note for note in p["notes"])


def test_predict_drops_nll_across_tokenizers_and_flags_small_k() -> None:
    a, b = record(0.5, 0.9, 0.2), record(0.4, 0.7, 0.3)
    b["tokenizer_hash"] = "other"
    a["pass_at_k"] = {"1": 0.5, "8": 0.9}
    a["pass_at_k_ci"] = {"1": [0.4, 0.6], "8": [0.8, 1.0]}
    b["pass_at_k"] = {"1": 0.4, "8": 0.7}
    b["pass_at_k_ci"] = {"1": [0.3, 0.5], "8": [0.6, 0.8]}
    p = predict({"a": a, "b": b})
    assert "heldout_nll" not in p["predictors"]
    assert any("different tokenizers" in note for note in p["notes"])
    assert any("k = 8 is small" in note for note in p["notes"])


def test_predict_rejects_too_few_checkpoints_and_a_missing_k() -> None:
    with pytest.raises(ValueError, match="at least two"):
        predict({"a": record(0.5, 0.9, 0.2)})
    with pytest.raises(ValueError, match="pass@32 is missing"):
        large_k({"a": record(0.5, 0.9, 0.2), "b": record(0.4, 0.7, 0.3)}, wanted=32)
