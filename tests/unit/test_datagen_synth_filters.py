"""posttrain data synth: RIP's reward-gap rule, and a target model other than the generator answering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.config import load_config
from posttrain.datagen import synth as sy
from posttrain.errors import ConfigError
from posttrain.records import Completion, SamplingParams
from posttrain.tasks.arithmetic import ArithmeticTask
from tests.unit.test_datagen_synth import ScriptedEngine


def test_rip_gap_rule_on_hand_made_scores() -> None:
    # min >= threshold alone (the gap rule off): the spread does not matter
    assert sy.rip_keep([0.5, 3.0], 0.5)
    # gap = max - min: 3.0 - 0.5 = 2.5 > 1.0 dropped; 1.4 - 0.5 = 0.9 <= 1.0 kept; equal to the bound kept
    assert not sy.rip_keep([0.5, 3.0], 0.5, max_gap=1.0)
    assert sy.rip_keep([0.5, 1.4, 0.9], 0.5, max_gap=1.0)
    assert sy.rip_keep([0.5, 1.5], 0.5, max_gap=1.0)
    assert sy.rip_keep([2.0, 2.0, 2.0], 0.0, max_gap=0.0)  # identical scores: gap 0
    assert not sy.rip_keep([0.4, 0.45], 0.5, max_gap=1.0)  # a small gap does not save a low worst response
    assert sy.rip_reason([0.4, 0.45], 0.5) == "rip_low_score"
    assert sy.rip_reason([0.5, 3.0], 0.5) == "rip_large_gap"


def test_a_negative_gap_bound_is_refused() -> None:
    with pytest.raises(ConfigError, match="datagen.synth.rip_max_gap"):
        load_config(None, ["datagen.synth.rip_max_gap=-1"])


class Instructions(ScriptedEngine):
    """Generation prompts get instruction ``Write n words.`` (n = its index in the call); a response
    to anything else is ``ok`` repeated: the i-th response of a call has i + 1 words."""

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        text = ["".join(chr(i) for i in p) for p in prompts]
        replies = [
            f"{sy.INSTRUCTION[0]}Write {n} words.{sy.INSTRUCTION[1]}"
            if "example instructions" in t
            else "ok " * (n + 1)
            for n, t in enumerate(text)
        ]
        return [Completion(p, [1], [0.0], "stop", r) for p, r in zip(prompts, replies)]


def test_rip_gap_drops_high_variance_tasks(tmp_path: Path) -> None:
    # 3 tasks x 3 responses; a response of w words scores s(w): task 0 scores s(1), s(2), s(3); task 1
    # s(4), s(5), s(6); task 2 s(7), s(8), s(9). With s(w) = w**2 / 10 the gaps are 0.8, 2.0 and 3.2
    # and the lowest scores 0.1, 1.6 and 4.9. rip_threshold 0.5 drops task 0 (low score); rip_max_gap 2.5
    # then drops task 2 (gap 3.2), keeps task 1 (gap 2.0).
    cfg = load_config(None, [f"output_dir={tmp_path}", "datagen.synth.num_prompts=3", "datagen.synth.kind=instruction",
                             "datagen.synth.answers=3", "datagen.synth.rip_threshold=0.5",
                             "datagen.synth.rip_max_gap=2.5"])  # fmt: skip

    def score(prompts: list[str], responses: list[str]) -> list[float]:
        return [len(r.split()) ** 2 / 10 for r in responses]

    tools = sy.Tools(Instructions(), lambda t: [ord(c) for c in t], ArithmeticTask(cfg.data.arithmetic), score)
    summary = sy.synthesize(cfg, tools, [sy.Seed("Write a poem.", None)])
    assert summary["dropped"] == {"rip_large_gap": 1, "rip_low_score": 1} and summary["kept"] == 1
    kept = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert kept[0]["prompt"] == "Write 1 words.\n" and len(kept[0]["completion"].split()) == 6  # its best response
    removed = {r["reason"]: r for r in map(json.loads, (tmp_path / "removed.jsonl").read_text().splitlines())}
    assert (removed["rip_large_gap"]["min_score"], removed["rip_large_gap"]["max_score"]) == (4.9, 8.1)


class OffByOne(ScriptedEngine):
    """A target that answers ``a+b=?`` with ``a+b+1``: a different model from the scripted generator."""

    def __init__(self) -> None:
        super().__init__()
        self.prompts = 0

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        self.prompts += len(prompts)
        out = []
        for ids in prompts:
            a, b = (int(x) for x in "".join(chr(i) for i in ids).split("=")[0].split("+"))
            out.append(Completion(ids, [1], [0.0], "stop", f"#{a + b + 1}"))
        return out


def test_the_target_model_answers_not_the_generator(tmp_path: Path) -> None:
    # The scripted generator writes tasks 1+10 .. 15+10; calls 3, 6, 9, 12 claim a+b+1, calls 5, 10, 15
    # are untagged (see test_datagen_synth). Answered by itself, the 8 right answers are kept; answered by
    # a target that always says a+b+1, exactly the 4 off-by-one tasks are kept and the 8 others dropped.
    args = [f"output_dir={tmp_path / 'own'}", "datagen.synth.num_prompts=15", "datagen.synth.shard_size=4",
            "datagen.synth.answers=3"]  # fmt: skip
    task = ArithmeticTask()
    own = sy.synthesize(load_config(None, args), sy.Tools(ScriptedEngine(), lambda t: [ord(c) for c in t], task),
                        [sy.Seed("1+2=?", "3")])  # fmt: skip
    assert own["kept"] == 8
    target = OffByOne()
    cfg = load_config(None, [*args, f"output_dir={tmp_path / 'target'}"])
    tools = sy.Tools(ScriptedEngine(), lambda t: [ord(c) for c in t], task, target=target,
                     target_encode=lambda t: [ord(c) for c in t])  # fmt: skip
    summary = sy.synthesize(cfg, tools, [sy.Seed("1+2=?", "3")])
    assert summary["kept"] == 4 and summary["dropped"] == {"answer_inconsistent": 8, "unparseable": 3}
    kept = [json.loads(line) for line in (tmp_path / "target" / "kept.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["answer"], r["completion"]) for r in kept] == [
        (f"{a}+10=?\n", str(a + 11), f"#{a + 11}") for a in (3, 6, 9, 12)
    ]
    assert target.prompts == 12 * 3  # every parsed task, K times, went to the target
