"""datagen.backend=ray for synth: whole shards on 2 Ray Data actors give the in-process rows, sampled at T=1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'posttrain[ray]'")

from posttrain.config import load_config  # noqa: E402
from posttrain.recipes.data import run_data  # noqa: E402
from tests.integration.test_datagen import SYNTH  # noqa: E402


def test_synth_on_two_ray_actors_equals_in_process(tmp_path: Path) -> None:
    # 8 generation prompts in 4 shards of 2 from the arithmetic task's seed problems; the actors take
    # shards in whatever order they finish
    common = [*SYNTH, "datagen.synth.num_prompts=8", "sampling.temperature=1.0",
              "datagen.synth.gen_sampling.temperature=1.0"]  # fmt: skip
    local, remote = tmp_path / "local", tmp_path / "ray"
    a = run_data("synth", load_config(None, [*common, f"output_dir={local}"]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        b = run_data("synth", load_config(None, [*common, f"output_dir={remote}", "datagen.backend=ray",
                                                 "datagen.workers=2"]))  # fmt: skip
    finally:
        ray.shutdown()
    assert a == b and a["finished"] and a["rows"] == 8 and a["shards"] == 4
    for name in ("kept.jsonl", "removed.jsonl"):
        assert (local / name).read_text() == (remote / name).read_text()
    outputs = [json.loads(line).get("output") for line in (local / "removed.jsonl").read_text().splitlines()]
    assert len(set(outputs)) == 8  # sampled, not one greedy string: equality is not trivial
    for j in range(4):
        assert (local / "shards" / f"shard-{j:05d}.dropped.jsonl").read_text() == (
            remote / "shards" / f"shard-{j:05d}.dropped.jsonl"
        ).read_text()
