"""posttrain data synth with ``datagen.synth.target_model``: another tiny model directory answers the new tasks."""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.config import load_config
from posttrain.datagen import synth as sy
from posttrain.models.io import load_model, load_tokenizer
from posttrain.models.tiny import build_tiny
from posttrain.recipes.data import synth_sampler
from posttrain.records import SamplingParams
from posttrain.rollout.factory import build_engine
from posttrain.seeds import derive_seed
from posttrain.tasks.arithmetic import ArithmeticTask
from tests.conftest import TINY
from tests.unit.test_datagen_synth import ScriptedEngine


def _majorities(out: Path) -> dict[str, str | None]:
    """Each answered task's majority answer: a kept row's target sample's, a dropped row's recorded one."""
    task = ArithmeticTask()
    rows = [json.loads(line) for line in (out / "kept.jsonl").read_text().splitlines()]
    found: dict[str, str | None] = {r["id"]: task.extract(r["completion"]) for r in rows}
    for line in (out / "removed.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["reason"] == "answer_inconsistent":
            found[r["id"]] = r["majority"]
    return dict(sorted(found.items()))


def test_the_target_model_directory_answers_not_the_generator(tmp_path: Path, tiny_dir: Path) -> None:
    other = build_tiny(TINY, tmp_path / "other", seed=1)  # same shape, other weights: other answers
    base = [f"model.path={tiny_dir}", "datagen.synth.num_prompts=8", "datagen.synth.shard_size=8",
            "datagen.synth.answers=1", "sampling.max_new_tokens=16"]  # fmt: skip
    task = ArithmeticTask()
    seeds = [sy.Seed("1+2=?", "3")]
    got, want = {}, {}
    for name, target in (("self", tiny_dir), ("other", other)):
        out = tmp_path / name
        cfg = load_config(None, [*base, f"output_dir={out}", f"datagen.synth.target_model={target}"])
        engine, encode = synth_sampler(cfg, task, str(target), "datagen.synth.target_model")
        # the scripted generator writes tasks a+10 (a = 1..8; the 5th untagged), so every parsed task
        # reaches the target; with one answer each, a task's majority is its one sample's answer
        tools = sy.Tools(ScriptedEngine(), lambda t: [ord(c) for c in t], task, target=engine, target_encode=encode)
        summary = sy.synthesize(cfg, tools, seeds)
        assert summary["rows"] == 8 and summary["dropped"]["unparseable"] == 1
        got[name] = _majorities(out)
        # the same K samples drawn straight from that directory's model, with the shard's seed
        tokenizer = load_tokenizer(target)
        direct = build_engine(cfg, load_model(target), tokenizer, target)
        questions = [f"{a}+10=?\n" for a in (1, 2, 3, 4, 6, 7, 8)]
        s = cfg.sampling
        samples = direct.generate([list(tokenizer(q)["input_ids"]) for q in questions],
                                  SamplingParams(s.temperature, s.top_p, s.top_k, s.max_new_tokens,
                                                 seed=derive_seed(cfg.seed, 73, 0)))  # fmt: skip
        want[name] = {f"synth-{i:06d}": task.extract(c.text) for i, c in zip((0, 1, 2, 3, 5, 6, 7), samples)}
    assert got == want
    assert got["self"] != got["other"]  # the two directories answer differently: the test tells them apart
    assert sum(v is not None for v in got["other"].values()) >= 3
