"""posttrain data synth: output parsing, the majority and RIP rules, a scripted engine through the filters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from posttrain.config import ArithmeticConfig, load_config
from posttrain.datagen import synth as sy
from posttrain.records import Completion, SamplingParams
from posttrain.rollout.base import TORCH_ENGINE, EngineCapabilities
from posttrain.tasks.arithmetic import ArithmeticTask
from posttrain.tasks.jsonl import JsonlTask

GOOD = (
    "The examples add two numbers. A new one of the same size:\n"
    "[New Question Begin]12+30=?[New Question End]\n"
    "[Final Answer to New Question Begin]\\boxed{42}[Final Answer to New Question End]"
)


def test_parse_good_malformed_and_missing_answer() -> None:
    assert sy.parse_output(GOOD, "verifiable") == sy.Parsed("12+30=?", "42", None)
    # spacing and case in the tags are tolerated; a bare answer without \boxed is read whole
    loose = "[new question  begin] 3*3=? [New Question End][Final Answer to New Question Begin] 9 [Final Answer to New Question End]"
    assert sy.parse_output(loose, "verifiable") == sy.Parsed("3*3=?", "9", None)
    assert sy.parse_output("I think 12+30=42.", "verifiable").error == "unparseable"
    assert sy.parse_output("[New Question Begin]12+30=?", "verifiable").error == "unparseable"  # never closed
    assert sy.parse_output("[New Question Begin]12+30=?[New Question End] answer 42", "verifiable") == sy.Parsed(
        "12+30=?", None, "missing_answer"
    )
    empty = "[New Question Begin]x[New Question End][Final Answer to New Question Begin]\\boxed{}[Final Answer to New Question End]"
    assert sy.parse_output(empty, "verifiable").error == "missing_answer"
    assert sy.parse_output("plan... [New Prompt Begin]Write a haiku.[New Prompt End]", "instruction") == sy.Parsed(
        "Write a haiku.", None, None
    )


def test_majority_and_answer_consistency_on_a_hand_made_set() -> None:
    assert sy.majority(["7", "7", "8", None]) == "7"
    assert sy.majority(["7", "8"]) is None  # a tie has no majority
    assert sy.majority([None, None]) is None
    assert sy.majority(["3", None, None, None]) == "3"  # no-answer samples do not vote
    task = ArithmeticTask(ArithmeticConfig())
    # the arithmetic task's answers follow '#'
    assert sy.answer_consistent(task, "42", ["12+30=42\n#42", "#42", "#41"]) == (True, "42", 2)
    assert sy.answer_consistent(task, "42", ["#41", "#41", "#42"]) == (False, "41", 2)
    assert sy.answer_consistent(task, "42", ["#41", "#42"])[0] is False  # tied
    # a jsonl task's last_number verifier: 42.0 and "42" agree
    assert sy.answer_consistent(_jsonl_task(), "42", ["so 42.0", "it is 42", "7"]) == (True, "42", 2)


def _jsonl_task(tmp: Path | None = None) -> JsonlTask:
    import tempfile

    d = Path(tmp or tempfile.mkdtemp())
    (d / "t.jsonl").write_text('{"prompt": "1+1=?", "answer": "2"}\n')
    return JsonlTask(str(d / "t.jsonl"), eval_path=str(d / "t.jsonl"))


def test_rip_rule() -> None:
    assert sy.rip_keep([0.5, 0.9, 0.7], 0.5)
    assert not sy.rip_keep([0.5, 0.9, 0.4], 0.5)
    assert not sy.rip_keep([], 0.0)


def test_prompt_seeds_depend_only_on_the_index() -> None:
    seeds = [sy.Seed(f"{i}+1=?", str(i + 1)) for i in range(20)]
    a = [sy.prompt_seeds(seeds, 2, 0, i) for i in range(8)]
    assert a[5] == sy.prompt_seeds(seeds, 2, 0, 5) and len(set(map(tuple, a))) > 1
    text = sy.generation_prompt(a[0], "verifiable")
    assert sy.QUESTION[0] in text and sy.ANSWER[1] in text and a[0][0].question in text


class ScriptedEngine:
    """A rollout engine whose replies are fixed by the prompt: the generator writes ``a+b=?`` tasks with
    answer ``a+b`` (every third one wrong by 1, every fifth without tags); the target answers right."""

    capabilities: EngineCapabilities = TORCH_ENGINE

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        out = []
        for ids in prompts:
            text = "".join(chr(i) for i in ids)
            if "Here are example problems" in text:
                self.calls += 1
                a, b = self.calls, 10
                if self.calls % 5 == 0:
                    reply = "no tags at all"
                else:
                    gen = a + b + (1 if self.calls % 3 == 0 else 0)
                    reply = (
                        f"[New Question Begin]{a}+{b}=?[New Question End]{sy.ANSWER[0]}\\boxed{{{gen}}}{sy.ANSWER[1]}"
                    )
            else:
                a, b = (int(x) for x in text.split("=")[0].split("+"))
                reply = f"#{a + b}"
            out.append(Completion(ids, [1], [0.0], "stop", reply))
        return out

    def sync_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        pass

    def close(self) -> None:
        pass


def test_synth_filters_and_output_that_grpo_reads(tmp_path: Path) -> None:
    cfg = load_config(None, [f"output_dir={tmp_path}", "datagen.synth.num_prompts=15", "datagen.synth.shard_size=4",
                             "datagen.synth.answers=3"])  # fmt: skip
    task = ArithmeticTask(cfg.data.arithmetic)
    tools = sy.Tools(ScriptedEngine(), lambda t: [ord(c) for c in t], task)
    seeds = [sy.Seed(f"{i}+2=?", str(i + 2)) for i in range(6)]
    summary = sy.synthesize(cfg, tools, seeds)
    # calls 1..15: 5, 10, 15 untagged (3); of the rest, 3, 6, 9, 12 carry a wrong answer (4)
    assert summary["finished"] and summary["shards"] == 4
    assert summary["dropped"] == {"answer_inconsistent": 4, "unparseable": 3}
    assert summary["kept"] == 8 and summary["rows"] == 15
    kept = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert [r["answer"] for r in kept] == ["11", "12", "14", "17", "18", "21", "23", "24"]
    # the kept file is a jsonl task's data: prompt and answer, verified by last_number
    loaded = JsonlTask(str(tmp_path / "kept.jsonl"), eval_path=str(tmp_path / "kept.jsonl"))
    ex = loaded.examples("train", None, 0)[0]
    assert ex.prompt == "1+10=?\n" and loaded.verify(ex, "so 11") == 1.0
    assert kept[0]["completion"] == "#11"  # the target's majority sample: an SFT demonstration


def test_instruction_kind_with_rip(tmp_path: Path) -> None:
    cfg = load_config(None, [f"output_dir={tmp_path}", "datagen.synth.num_prompts=3", "datagen.synth.kind=instruction",
                             "datagen.synth.answers=2", "datagen.synth.rip_threshold=0.5"])  # fmt: skip

    class Engine(ScriptedEngine):
        def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
            text = ["".join(chr(i) for i in p) for p in prompts]
            replies = [
                f"{sy.INSTRUCTION[0]}Write {n} words.{sy.INSTRUCTION[1]}"
                if "example instructions" in t
                else "ok " * (n + 1)
                for n, t in enumerate(text)
            ]
            return [Completion(p, [1], [0.0], "stop", r) for p, r in zip(prompts, replies)]

    # a stand-in for the reward model: a response's score is its word count / 4 (lowest of 2 must be >= 0.5)
    def score(prompts: list[str], responses: list[str]) -> list[float]:
        return [len(r.split()) / 4 for r in responses]

    tools = sy.Tools(Engine(), lambda t: [ord(c) for c in t], ArithmeticTask(cfg.data.arithmetic), score)
    summary = sy.synthesize(cfg, tools, [sy.Seed("Write a poem.", None)])
    # the 6 responses (2 a task) are "ok" x 1..6: task 0 scores (1/4, 2/4): min 0.25 < 0.5, dropped;
    # tasks 1 and 2 score (3/4, 4/4) and (5/4, 6/4): kept, each with its best response as the completion
    assert summary["dropped"] == {"rip_low_score": 1} and summary["kept"] == 2
    kept = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert [len(r["completion"].split()) for r in kept] == [4, 6]
    assert kept[0]["prompt"] == "Write 1 words.\n"


@pytest.mark.parametrize("bad", ['{"prompt": "1+1=?", "answer": "2"}\n{"prompt": 5, "answer": "1"}\n'])
def test_bad_seed_row_names_file_and_line(tmp_path: Path, bad: str) -> None:
    from posttrain.errors import DataError

    path = tmp_path / "seeds.jsonl"
    path.write_text(bad)
    cfg = load_config(None, [f"datagen.input={path}"])
    with pytest.raises(DataError, match=r"seeds.jsonl:2: prompt: expected a string"):
        sy.load_seeds(cfg, ArithmeticTask(cfg.data.arithmetic))
