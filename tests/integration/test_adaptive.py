"""`posttrain adaptive` end to end on a tiny model, and the mixed decoding task's rewards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from posttrain.cli import main
from posttrain.config import ArithmeticConfig, MixedDecodingConfig
from posttrain.models.temperature_head import load_head
from posttrain.tasks.base import Example
from posttrain.tasks.mixed_decoding import MixedDecodingTask, group_rewards, kind_of


def test_variety_rewards_a_new_number_once_per_group() -> None:
    """List 3,7: '#5' twice and '#9' once -> only '#9' is new to the list and to the group;
    '#3' is listed; 'no number' has none; an unscored sample stays unscored."""
    ex = Example(id="variety:3,7", prompt="not in 3,7?\n", answer="3,7")
    task = MixedDecodingTask()
    texts = ["#5", "#9", "#5", "#3", "no number", "#11"]
    scores = [task.verify(ex, t) for t in texts[:5]] + [None]
    assert scores == [1.0, 1.0, 1.0, 0.0, 0.0, None]
    assert group_rewards(ex, texts, scores) == [0.0, 1.0, 0.0, 0.0, 0.0, None]
    exact = Example(id="exact:1+2", prompt="1+2=?\n", answer="3")
    assert group_rewards(exact, ["#3", "#3"], [1.0, 1.0]) == [1.0, 1.0]  # exactness: repeats are fine


def test_mixed_task_splits_and_kinds() -> None:
    task = MixedDecodingTask(MixedDecodingConfig(variety_fraction=0.5), ArithmeticConfig(num_operands=2, digits=1))
    train, test = task.examples("train", 200, 0), task.examples("test", 20, 0)
    assert {ex.id for ex in train}.isdisjoint({ex.id for ex in test})
    assert {kind_of(ex) for ex in train} == {"exact", "variety"}
    for ex in train:  # every demonstration earns its reward
        assert ex.completion is not None and task.verify(ex, ex.completion) == 1.0


def config(tmp_path: Path, level: str) -> Path:
    tiny = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}
    data = {"task": "mixed_decoding", "num_train": 64, "arithmetic": {"num_operands": 2, "digits": 1}}
    cfg = {
        "name": "adaptive-test", "output_dir": str(tmp_path / "run"), "model": {"tiny": tiny}, "data": data,
        "sampling": {"max_new_tokens": 8}, "train": {"max_steps": 2, "micro_batch_size": 8},
        "optim": {"lr": 0.01}, "rollout": {"prompts_per_step": 4, "samples_per_prompt": 3},
        "adaptive": {"level": level, "width": 8, "eval_prompts": 2, "eval_samples": 2},
        "stages": {"sft": {"train": {"max_steps": 2, "batch_size": 8, "micro_batch_size": 8}}},
    }  # fmt: skip
    path = tmp_path / "adaptive.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("level", ["example", "token"])
def test_adaptive_command_trains_saves_and_compares(tmp_path: Path, level: str) -> None:
    path = config(tmp_path, level)
    assert main(["adaptive", "--config", str(path)]) == 0
    run = tmp_path / "run"
    head = load_head(run / "final")
    assert head is not None and head.level == level  # saved beside the model, and loads with it
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all("reward/exact" in r and "temperature/variety" in r for r in records)
    results = json.loads((run / "adaptive.json").read_text())
    assert set(results["results"]) == {"T=0", "T=0.4", "T=0.8", "T=1.2", "adaptive"}
    assert set(results["kinds"]) == {"exact", "variety"}
    assert all(0.0 <= row[k] <= 1.0 for row in results["results"].values() for k in ("exact", "variety", "mean"))
    if level == "example":  # continue from the saved head: model.path holds it
        again = ["adaptive", "--config", str(path), f"model.path={run / 'final'}", f"output_dir={tmp_path / 'more'}",
                 "train.max_steps=1", "adaptive.eval_prompts=0", "adaptive.width=4"]  # fmt: skip
        assert main(again) == 0
        more = load_head(tmp_path / "more" / "final")
        assert more is not None and more.settings == head.settings  # the saved head's, not adaptive.width's


def test_vllm_is_refused_in_one_line_before_any_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """vLLM samples a call at one temperature, with no per-token temperature from a head: refused before SFT."""
    assert main(["adaptive", "--config", str(config(tmp_path, "token")), "engine.backend=vllm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in ("engine.backend", "vllm engine", "temperature head")), err
    assert not (tmp_path / "run" / "sft").exists()


def test_bad_temperatures_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["adaptive", "--config", str(config(tmp_path, "example")), "adaptive.temperatures=[0.5]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "adaptive.temperatures" in err[0] and "at least two" in err[0]
