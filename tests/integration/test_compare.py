"""``posttrain compare`` end to end on a tiny model: every method, seed and point, the report, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import posttrain.recipes.compare as compare
from posttrain.cli import main
from posttrain.config import load_config
from posttrain.errors import ConfigError
from tests.conftest import FAST

RECIPE = """
name: tiny-compare
compare:
  seeds: 2
  sampled_responses: 64
  eval_points: 2
  methods:
    offline: {recipe: dpo, rollout: {sync_every: 0}}
    online: {recipe: dpo, rollout: {sync_every: 1}, optim: {lr: 2.0e-3}}
    grpo: {recipe: grpo}
stages:
  dpo:
    dpo: {mode: online}
    rollout: {prompts_per_step: 4, samples_per_prompt: 4}
  grpo:
    grpo: {drop_uniform_groups: false}
"""


def test_compare_end_to_end(tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(RECIPE)
    out = tmp_path / "out"
    # the untrained model's samples are rarely right, so a verifier gives DPO no pair on most draws: train on a
    # reward that always tells samples apart (evaluation still checks answers)
    parity = "reward.components=[{kind: python, function: tests.rewards:char_sum_parity}]"
    args = ["compare", "--config", str(path), *FAST, f"output_dir={out}", f"compare.sft_path={tiny_dir}", parity]
    assert main(args) == 0
    points = [json.loads(line) for line in (out / "points.jsonl").read_text().splitlines()]
    assert len(points) == 1 + 3 * 2 * 2  # the SFT point, then methods x seeds x eval points
    assert {(p["method"], p["seed"], p["responses"]) for p in points[1:]} == {
        (m, s, r) for m in ("offline", "online", "grpo") for s in (0, 1) for r in (32, 64)
    }
    report = (out / "compare.md").read_text()
    for method in ("sft", "offline", "online", "grpo"):
        assert f"| {method} |" in report
    assert "| pass@1 | pass@4 |" in report and " ± " in report
    assert (out / "plots" / "accuracy_vs_samples.png").read_bytes().startswith(b"\x89PNG")
    summary = json.loads((out / "compare.json").read_text())["summary"]
    assert summary["grpo"]["seeds"] == 2 and summary["grpo"]["responses"] == 64
    # each run trained exactly its budget: 64 responses / 16 per step = 4 steps, in two segments
    steps = [r["step"] for r in map(json.loads, (out / "online" / "seed1" / "metrics.jsonl").read_text().splitlines())]
    assert steps == [1, 2, 3, 4]

    def no_training(*args: object, **kwargs: object) -> Path:
        raise AssertionError("a finished point was trained again")

    monkeypatch.setitem(compare.RECIPES, "dpo", no_training)
    monkeypatch.setitem(compare.RECIPES, "grpo", no_training)
    assert main([*args, "--resume"]) == 0
    assert json.loads((out / "compare.json").read_text())["summary"] == summary


def test_compare_checks_methods_before_training(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(RECIPE)
    with pytest.raises(ConfigError, match="multiple of 32"):
        compare.method_configs(path, ["compare.sampled_responses=48"])
    with pytest.raises(ConfigError, match="set dpo.mode: online"):
        compare.method_configs(path, ["compare.methods={x: {recipe: dpo}}", "stages.dpo={}"])
    bad = RECIPE.replace("{recipe: grpo}", "{recipe: ppo}")
    path.write_text(bad)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (
        info.value.render() == f"{path}:10: compare.methods.grpo.recipe: each method needs recipe: dpo or recipe: grpo"
    )
    path.write_text(RECIPE.replace("sync_every: 0", "sync_evry: 0"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "compare.methods.offline.rollout.sync_evry: unknown key 'sync_evry'; did you mean 'sync_every'?" in str(
        info.value
    )
    assert info.value.line == 8
