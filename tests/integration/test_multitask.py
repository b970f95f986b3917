"""Multi-task RL on the tiny model: GRPO and online DPO over two tasks, the UCB curriculum's exact resume,
per-task evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import posttrain.recipes.grpo as grpo_recipe
from posttrain.config import load_config
from posttrain.models.io import load_model
from posttrain.recipes.evaluate import evaluate_dirs, write_results
from posttrain.recipes.online_dpo import train_online_dpo
from posttrain.train.metrics import read_metrics
from tests.conftest import FAST
from tests.integration.test_recipes import Crash, crash_after

SIGNAL = ("grpo.overlong=penalty", "grpo.overlong_reward=-1.0", "grpo.drop_uniform_groups=false", "optim.lr=1e-2")


def two_tasks(tmp_path: Path, tiny_dir: Path, name: str, *extra: str, curriculum: str = "fixed") -> Any:
    """Task "add" (verifier reward) and task "short" (shorter is better: a python reward of its own)."""
    data = {
        "curriculum": curriculum,
        "ucb": {"window": 16, "temperature": 0.5},
        "tasks": [
            {"name": "add", "arithmetic": {"digits": 1, "num_operands": 2}, "weight": 1.0},
            {"name": "short", "arithmetic": {"digits": 1, "num_operands": 3}, "weight": 1.0,
             "reward": {"components": [{"kind": "python", "function": "tests.rewards:shorter_is_better"}],
                        "workers": 1}},
        ],
    }  # fmt: skip
    overrides = [*FAST, f"output_dir={tmp_path / name}", f"model.path={tiny_dir}", *SIGNAL, *extra]
    return load_config({"data": data}, overrides)


def test_grpo_over_two_tasks_logs_each_tasks_reward_and_trains(tmp_path: Path, tiny_dir: Path) -> None:
    cfg = two_tasks(tmp_path, tiny_dir, "g", "train.max_steps=3")
    grpo_recipe.train_grpo(cfg)
    records = read_metrics(tmp_path / "g" / "metrics.jsonl")
    assert len(records) == 3
    for r in records:
        assert r["task/add/prompts"] + r["task/short/prompts"] == 4
        assert r["task/add/weight"] == r["task/short/weight"] == 0.5
        if r["task/short/prompts"]:  # the length reward is -len: never the verifier's 0/1
            assert r["task/short/reward"] < 0 and r["reward/short/shorter_is_better"] == r["task/short/reward"]
        if r["task/add/prompts"]:
            assert 0 <= r["task/add/reward"] <= 1 and r["task/add/accuracy"] == r["task/add/reward"]
    assert any(r["task/add/prompts"] for r in records) and any(r["task/short/prompts"] for r in records)
    before, after = load_model(tiny_dir).state_dict(), load_model(tmp_path / "g" / "final").state_dict()
    assert any(not (before[k] == after[k]).all() for k in before)
    results = evaluate_dirs(cfg, {"grpo": str(tmp_path / "g" / "final")})
    assert set(results["grpo"]["tasks"]) == {"add", "short"}
    for rec in results["grpo"]["tasks"].values():
        assert rec["num_problems_used"] == 8  # eval.num_problems per task
    assert results["grpo"]["num_scored_problems"] == 16
    write_results(tmp_path, results)
    assert "| grpo | add | 8 |" in (tmp_path / "eval.md").read_text()  # the per-task table


def test_online_dpo_over_two_tasks(tmp_path: Path, tiny_dir: Path) -> None:
    cfg = two_tasks(tmp_path, tiny_dir, "d", "train.max_steps=2", "dpo.mode=online", "dpo.pairs=best_worst")
    train_online_dpo(cfg)
    records = read_metrics(tmp_path / "d" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert all("task/add/reward" in r and "task/short/prompts" in r for r in records)


def test_ucb_curriculum_resumes_exactly(tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = ("train.max_steps=5", "train.save_every=2")
    grpo_recipe.train_grpo(two_tasks(tmp_path, tiny_dir, "a", *run, curriculum="ucb"))
    cfg = two_tasks(tmp_path, tiny_dir, "b", *run, curriculum="ucb")
    crash_after(monkeypatch, grpo_recipe, 3)  # the checkpoint at iteration 2 holds the curriculum's state
    with pytest.raises(Crash):
        grpo_recipe.train_grpo(cfg)
    monkeypatch.undo()
    grpo_recipe.train_grpo(cfg, resume=True)
    a, b = read_metrics(tmp_path / "a" / "metrics.jsonl"), read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["iteration"] for r in b] == [1, 2, 3, 4, 5]
    weights = [r["task/add/weight"] for r in a]
    assert weights[0] == 0.5 and len(set(weights)) > 1  # the mix moves with the tasks' learnability
    for key in ("task/add/weight", "task/short/weight", "task/add/ucb", "task/add/prompts", "reward", "loss"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=1e-5, nan_ok=True), key


def test_grpo_with_a_hero_reward_trains_and_keeps_its_bounds(tmp_path: Path, tiny_dir: Path) -> None:
    """Verifier + a dense python score under reward.combine=hero: every reward lies in [-alpha, 1 + beta].

    The variance-aware weight is not in the reward: it scales the advantages (``rl_batch.prompt_weighted``)."""
    reward = {
        "combine": "hero",
        "workers": 1,
        "components": [{"kind": "verifier"}, {"kind": "python", "function": "tests.rewards:shorter_is_better"}],
    }
    overrides = [*FAST, f"output_dir={tmp_path / 'h'}", f"model.path={tiny_dir}", *SIGNAL, "train.max_steps=2"]
    grpo_recipe.train_grpo(load_config({"reward": reward}, [*overrides, "grpo.advantage=dr_grpo"]))
    records = read_metrics(tmp_path / "h" / "metrics.jsonl")
    assert len(records) == 2 and all(r["loss"] is not None for r in records)
    for r in records:
        assert r["reward/shorter_is_better"] < 0  # the raw dense score is logged as it is
        assert -0.05 <= r["reward"] <= 1.05
