"""posttrain data synth on the tiny model: a killed run resumes and writes every row exactly once; its
output feeds posttrain grpo; the Ray Data path gives the in-process rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.cli import main
from posttrain.config import load_config
from posttrain.datagen import synth as sy
from posttrain.errors import ConfigError
from posttrain.tasks.arithmetic import ArithmeticTask
from tests.conftest import FAST
from tests.unit.test_datagen_synth import ScriptedEngine

SYNTH = [
    "model.tiny.hidden_size=32", "model.tiny.num_layers=1", "model.tiny.num_heads=2",
    "model.tiny.intermediate_size=64", "model.tiny.max_position_embeddings=512",
    "datagen.synth.num_prompts=6", "datagen.synth.shard_size=2", "datagen.synth.answers=2",
    "datagen.synth.gen_sampling.max_new_tokens=12", "sampling.max_new_tokens=6",
]  # fmt: skip


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_killed_synth_resumes_every_row_exactly_once(tmp_path: Path) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(["data", "synth", f"output_dir={whole}", *SYNTH]) == 0
    # stopped after one shard, as a kill between shards leaves it: shard 0 on disk, no kept.jsonl yet
    assert main(["data", "synth", f"output_dir={parts}", "datagen.synth.max_shards=1", *SYNTH]) == 0
    assert sorted(p.name for p in (parts / "shards").glob("shard-*[0-9].jsonl")) == ["shard-00000.jsonl"]
    summary = json.loads((parts / "summary.json").read_text())
    assert not summary["finished"] and summary["rows"] == 2 and not (parts / "kept.jsonl").exists()
    shard0 = (parts / "shards" / "shard-00000.dropped.jsonl").read_text()
    assert main(["data", "synth", f"output_dir={parts}", *SYNTH]) == 0  # resume
    assert (parts / "shards" / "shard-00000.dropped.jsonl").read_text() == shard0  # not redone
    ids = _ids(parts / "kept.jsonl") + _ids(parts / "removed.jsonl")
    assert sorted(ids) == [f"synth-{i:06d}" for i in range(6)]  # every generation prompt exactly once
    for name in ("kept.jsonl", "removed.jsonl"):
        assert (parts / name).read_text() == (whole / name).read_text()
    final = json.loads((parts / "summary.json").read_text())
    assert final["finished"] and final["rows"] == 6 and final == json.loads((whole / "summary.json").read_text())


def test_synth_output_trains_grpo_and_sft(tmp_path: Path) -> None:
    cfg = load_config(None, [f"output_dir={tmp_path / 'synth'}", "datagen.synth.num_prompts=24",
                             "datagen.synth.answers=3"])  # fmt: skip
    tools = sy.Tools(ScriptedEngine(), lambda t: [ord(c) for c in t], ArithmeticTask(cfg.data.arithmetic))
    assert sy.synthesize(cfg, tools, [sy.Seed("1+2=?", "3")])["kept"] > 8
    kept = tmp_path / "synth" / "kept.jsonl"
    run = ["grpo", f"output_dir={tmp_path / 'grpo'}", "data.task=jsonl", f"data.path={kept}", "train.max_steps=1",
           "eval.num_problems=2", "grpo.drop_uniform_groups=false", *FAST]  # fmt: skip
    assert main(run) == 0
    assert (tmp_path / "grpo" / "final" / "config.json").is_file()
    sft = ["sft", f"output_dir={tmp_path / 'sft'}", "data.task=jsonl", f"data.path={kept}", "train.max_steps=1", *FAST,
           "train.batch_size=4", "train.micro_batch_size=4"]  # fmt: skip
    assert main(sft) == 0
    assert (tmp_path / "sft" / "final" / "config.json").is_file()


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    cfg = load_config(None, [f"output_dir={tmp_path}", "datagen.synth.num_prompts=4", "datagen.synth.shard_size=2",
                             "datagen.synth.max_shards=1"])  # fmt: skip
    tools = sy.Tools(ScriptedEngine(), lambda t: [ord(c) for c in t], ArithmeticTask(cfg.data.arithmetic))
    assert not sy.synthesize(cfg, tools, [sy.Seed("1+2=?", "3")])["finished"]
    other = load_config(None, [f"output_dir={tmp_path}", "datagen.synth.num_prompts=4", "datagen.synth.shard_size=3"])
    with pytest.raises(ConfigError, match="other settings \\(synth differ\\)"):
        sy.synthesize(other, tools, [sy.Seed("1+2=?", "3")])
