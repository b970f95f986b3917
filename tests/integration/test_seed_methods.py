"""A few real steps of the seed methods on a tiny model: online DPO with DivPO pairs, GRPO on AggLM's task."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import posttrain.recipes.grpo as grpo_recipe
import posttrain.recipes.online_dpo as online
from posttrain.config import load_config
from posttrain.recipes.evaluate import run_eval
from posttrain.tasks.aggregation import ModelCandidates
from posttrain.train.metrics import read_metrics
from tests.conftest import FAST, TINY
from tests.integration.test_recipes import weights

LN2 = math.log(2.0)
SHORTER = "reward.components=[{kind: python, function: tests.rewards:shorter_is_better}]"


@pytest.mark.parametrize("criterion", ["logprob", "word_frequency", "ngram", "embedding"])
def test_online_dpo_with_divpo_pairs_trains(tmp_path: Path, tiny_dir: Path, criterion: str) -> None:
    cfg = load_config(
        None,
        [*FAST, f"output_dir={tmp_path / criterion}", f"model.path={tiny_dir}", "dpo.mode=online",
         "train.max_steps=4", "optim.lr=1e-2", "dpo.pairs=divpo", f"dpo.divpo_criterion={criterion}",
         "dpo.divpo_split=quantile", "dpo.divpo_threshold=0.5", SHORTER],
    )  # fmt: skip
    final = online.train_online_dpo(cfg)
    records = read_metrics(tmp_path / criterion / "metrics.jsonl")
    # -len rewards: a pool has a top and a bottom half unless its samples are all of one length (a tie)
    assert [r["pairs"] + r["skipped_tie"] for r in records] == [4, 4, 4, 4]
    assert sum(r["pairs"] for r in records) >= 8
    assert records[0]["loss"] == pytest.approx(LN2, abs=1e-5)
    assert max(abs(r["loss"] - LN2) for r in records[1:]) > 1e-3
    before, after = weights(tiny_dir), weights(final)
    assert any(not torch.equal(before[k], after[k]) for k in before)


AGG = [
    "data.task=aggregation",
    "data.aggregation.num_candidates=2",
    "data.aggregation.max_new_tokens=8",
    "data.aggregation.num_train_problems=8",
    "data.aggregation.instruction=Final answer",
    "model.tiny.max_position_embeddings=128",  # the aggregator reads the problem and both candidates
]


def test_grpo_on_the_aggregation_task_and_its_eval(
    tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agg = [*AGG, f"data.aggregation.candidates_from={tiny_dir}", f"data.aggregation.cache_dir={tmp_path / 'cands'}"]
    cfg = load_config(
        None,
        [*FAST, *agg, f"output_dir={tmp_path / 'agg'}", "train.max_steps=2", "grpo.drop_uniform_groups=false",
         "grpo.overlong=penalty", "grpo.overlong_reward=-1.0", "sampling.max_new_tokens=8"],
    )  # fmt: skip
    final = grpo_recipe.train_grpo(cfg)
    records = read_metrics(tmp_path / "agg" / "metrics.jsonl")
    assert records and all("reward" in r for r in records)
    assert any(r.get("loss") is not None for r in records)  # truncation penalties give the groups a spread
    assert len(list((tmp_path / "cands").glob("*/candidates.json.gz"))) == 1  # the training pool, drawn once

    def no_draw(self: Any, problems: Any) -> Any:
        raise AssertionError("the candidates were drawn again")

    # the evaluation draws the test problems' candidates once; a second evaluation reads them from the cache
    ecfg = load_config(None, [*FAST, *agg, f"output_dir={tmp_path / 'ev'}", f"model.path={final}"])
    first = run_eval(ecfg)["model"]["aggregation"]
    monkeypatch.setattr(ModelCandidates, "draw", no_draw)
    again = run_eval(ecfg)["model"]["aggregation"]
    assert again == first
    assert first["num_candidates"] == 2 and first["num_problems"] == 8
    for key in ("majority_vote", "candidate_accuracy", "pass_at_m", "aggregator_pass_at_1", "aggregator_greedy"):
        assert 0.0 <= first[key] <= 1.0, key
    assert first["pass_at_m"] >= first["majority_vote"] and first["pass_at_m"] >= first["candidate_accuracy"]
    saved = json.loads((tmp_path / "ev" / "eval.json").read_text())["model"]
    assert "diversity" in saved and saved["aggregation"] == first
    assert "Aggregation at m = 2" in (tmp_path / "ev" / "eval.md").read_text()


def test_offline_dpo_on_length_instructed_pairs_and_the_violation_eval(tmp_path: Path, prefs: Path) -> None:
    import posttrain.recipes.dpo as dpo_recipe
    from posttrain.models.io import load_tokenizer
    from posttrain.models.tiny import build_tiny
    from posttrain.recipes.pairwise import load_pair_data

    # a context long enough for the paper's instruction before each prompt
    model = build_tiny(dataclasses.replace(TINY, max_position_embeddings=160), tmp_path / "tiny160", seed=0)
    lift = ["data.length_instructions.enabled=true", "data.length_instructions.max_words=1"]
    base = [*FAST, "data.task=jsonl", f"data.path={prefs}", f"model.path={model}", "train.max_steps=3", "optim.lr=3e-3"]
    tok = load_tokenizer(model)
    plain, _ = load_pair_data(load_config(None, base), tok, 160, "dpo")
    lifted, _ = load_pair_data(load_config(None, [*base, *lift]), tok, 160, "dpo")
    assert len(lifted) == 2 * len(plain)  # every pair and its length-instructed copy
    final = dpo_recipe.train_dpo(load_config(None, [*base, *lift, f"output_dir={tmp_path / 'lift'}"]))
    records = read_metrics(tmp_path / "lift" / "metrics.jsonl")
    assert records[0]["loss"] == pytest.approx(LN2, abs=1e-5)
    ecfg = load_config(None, [*FAST, *lift, f"output_dir={tmp_path / 'ev'}", f"model.path={final}"])
    out = run_eval(ecfg)["model"]["length_instructions"]
    assert out["max_words"] == 1 and 0.0 <= out["violation_rate"] <= 1.0
    assert out["violation_rate_ci"][0] <= out["violation_rate"] <= out["violation_rate_ci"][1]
