"""LIFT: length-instruction augmentation of pairs and demonstrations, and the violation metric."""

from __future__ import annotations

import random

import pytest

from posttrain.config import ArithmeticConfig, LengthInstructionsConfig, load_config
from posttrain.errors import ConfigError
from posttrain.tasks.arithmetic import ArithmeticTask
from posttrain.tasks.length import (
    LengthInstructedTask,
    instruct,
    lift_pair,
    lift_pairs,
    violation_rate,
    word_count,
)
from posttrain.tasks.preferences import PreferencePair

CFG = LengthInstructionsConfig(enabled=True, max_words=3)
TEMPLATE = CFG.template


def test_instruction_uses_the_papers_template() -> None:
    assert instruct("Say hi.", 5, TEMPLATE) == "Answer the following instruction using 5 words or less.\n\nSay hi."
    chat = instruct([{"role": "system", "content": "s"}, {"role": "user", "content": "Say hi."}], 2, TEMPLATE)
    assert isinstance(chat, list) and chat[0] == {"role": "system", "content": "s"}
    assert chat[1]["content"].startswith("Answer the following instruction using 2 words or less.")


def test_lift_pair_rules() -> None:
    """Chosen 5 words, rejected 2: N in [2, 4]; the rejected keeps it and the chosen breaks it, so they swap.
    Chosen 2, rejected 5: the preference stands. Equal lengths: N = the length, unchanged."""
    long, short = "one two three four five", "one two"
    for seed in range(20):
        n, chosen, rejected = lift_pair(long, short, random.Random(seed))
        assert 2 <= n <= 4 and (chosen, rejected) == (short, long)
        n, chosen, rejected = lift_pair(short, long, random.Random(seed))
        assert 2 <= n <= 4 and (chosen, rejected) == (short, long)
    assert lift_pair("a b", "c d", random.Random(0)) == (2, "a b", "c d")


def test_lift_pairs_adds_instructed_copies() -> None:
    pairs = [PreferencePair(f"p{i}", f"q{i}", "a b c d", "a", f"f:{i}") for i in range(10)]
    out = lift_pairs(pairs, CFG, seed=0)
    assert len(out) == 20 and out[:10] == pairs
    copy = out[10]
    assert copy.id == "p0:lift" and isinstance(copy.prompt, str) and copy.prompt.endswith("words or less.\n\nq0")
    assert {str(p.prompt).split()[5] for p in out[10:]} <= {"1", "2", "3"}  # N between the lengths 1 and 4
    assert (copy.chosen, copy.rejected) == ("a", "a b c d")  # N = 1..3: only the one-word reply keeps it
    only = lift_pairs(pairs, LengthInstructionsConfig(enabled=True, keep_original=False, fraction=0.5), seed=0)
    assert 0 < len(only) < 10 and all(p.id.endswith(":lift") for p in only)


def test_violation_rate_by_hand() -> None:
    assert word_count(" a  b\nc ") == 3
    assert violation_rate(["a b", "a b c d", "a"], [2, 3, 3]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        violation_rate([], [])


def test_demonstrations_follow_their_limit_and_test_prompts_share_one() -> None:
    task = LengthInstructedTask(ArithmeticTask(ArithmeticConfig()), CFG)
    for ex in task.examples("train", 20, seed=0):
        assert ex.completion is not None and isinstance(ex.prompt, str)
        n = int(ex.prompt.split("using ")[1].split(" words")[0])
        w = word_count(ex.completion)
        assert w <= n <= 2 * w
    test = task.examples("test", 4, seed=0)
    assert all(isinstance(ex.prompt, str) and ex.prompt.startswith(TEMPLATE.replace("<MAX_LEN>", "3")) for ex in test)
    assert task.verify(test[0], f"#{test[0].answer}") == 1.0
    record = task.sample_record(test[:2], [["a b", "a b c d"], ["a", "b"]], seed=0)["length_instructions"]
    assert record["violation_rate"] == pytest.approx(0.25) and record["mean_words"] == pytest.approx(2.0)


def test_template_needs_the_placeholder() -> None:
    with pytest.raises(ConfigError, match="data.length_instructions.template"):
        load_config(None, ["data.length_instructions.template=Be brief."])
