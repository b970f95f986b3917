"""The AggLM task: its prompt, majority vote, the hard/easy mix and the baselines, on hand-made candidates."""

from __future__ import annotations

import pytest

from posttrain.config import AggregationConfig, ArithmeticConfig, load_config
from posttrain.errors import ConfigError
from posttrain.tasks.aggregation import AggregationTask, aggregation_prompt, mix_hard_easy, vote_score
from posttrain.tasks.arithmetic import ArithmeticTask
from posttrain.tasks.base import Example

BASE = ArithmeticTask(ArithmeticConfig(num_operands=2, digits=1))


def test_prompt_numbers_the_candidates() -> None:
    text = aggregation_prompt("3+4=?\n", ["3+4=7\n#7", " #8 "], "Pick one.")
    assert text == "3+4=?\nSolution 1:\n3+4=7\n#7\nSolution 2:\n#8\nPick one.\n"


def test_vote_score_breaks_ties_uniformly() -> None:
    assert vote_score(["7", "7", "8"], "7") == 1.0
    assert vote_score(["7", "8", "8"], "7") == 0.0
    assert vote_score(["7", "8", None, None], "7") == 0.5  # 7 and 8 tie; no-answer candidates do not vote
    assert vote_score([None, None], "7") == 0.0


def fake_candidates(problems: list[Example]) -> list[list[str]]:
    """Problem i: the right answer twice and a wrong one (easy) when i is even; wrong twice (hard) when odd."""
    rows = []
    for i, ex in enumerate(problems):
        right, wrong = f"#{ex.answer}", f"#{int(str(ex.answer)) + 1}"
        rows.append([right, right, wrong] if i % 2 == 0 else [wrong, wrong, right])
    return rows


def task(**kw: object) -> AggregationTask:
    cfg = AggregationConfig(candidates_from="unused", num_candidates=3, num_train_problems=20, **kw)  # type: ignore[arg-type]
    return AggregationTask(BASE, cfg, fake_candidates)


def test_examples_carry_the_base_answer_and_verify_with_the_base_task() -> None:
    t = task()
    ex = t.examples("test", 4, seed=0)[1]
    base = BASE.examples("test", 4, seed=0)[1]
    assert isinstance(ex.prompt, str) and ex.answer == base.answer
    assert ex.prompt.startswith(str(base.prompt).strip() + "\nSolution 1:\n#")
    assert ex.prompt.endswith(
        "Solution 3:\n#" + str(base.answer) + "\nCheck the solutions and write the correct one.\n"
    )
    assert t.verify(ex, f"#{base.answer}") == 1.0 and t.verify(ex, "#999") == 0.0
    assert t.is_hard(ex) and not t.is_hard(t.examples("test", 4, seed=0)[0])


def test_training_mix_keeps_all_hard_and_half_the_easy() -> None:
    t = task()
    pool = t.train_pool()
    assert t.mix == {"hard": 10, "easy": 10, "easy_kept": 5}
    assert len(pool) == 15 and sum(t.is_hard(ex) for ex in pool) == 10
    # hard_fraction 0.8: round(10 * 0.2 / 0.8) = 2 easy problems beside the 10 hard ones
    assert task(hard_fraction=0.8).train_pool().__len__() == 12
    drawn = t.examples("train", 6, seed=3)
    assert len({ex.id for ex in drawn}) == 6 and all(ex in pool for ex in drawn)
    assert t.examples("train", 6, seed=3) == drawn  # the same seed, the same draw


def test_mix_hard_easy_counts() -> None:
    hard = [Example(id=f"h{i}", prompt="") for i in range(4)]
    easy = [Example(id=f"e{i}", prompt="") for i in range(6)]
    assert len(mix_hard_easy(hard, easy, 0.5, 0.0, 0)) == 4 + 3
    assert len(mix_hard_easy(hard, easy, 0.5, 0.5, 0)) == 4 + 4
    assert len(mix_hard_easy(hard, easy, 0.0, 0.0, 0)) == 4


def test_baselines_by_hand() -> None:
    """Four test problems, alternately easy (2 of 3 right) and hard (1 of 3 right):
    majority vote 1, 0, 1, 0 -> 0.5; candidate accuracy (2/3 + 1/3) / 2 = 0.5; pass@3 = 1."""
    t = task()
    out = t.baselines(t.examples("test", 4, seed=0), seed=0)
    assert out["majority_vote"] == pytest.approx(0.5)
    assert out["candidate_accuracy"] == pytest.approx(0.5)
    assert out["pass_at_m"] == 1.0 and out["hard_problems"] == 2
    lo, hi = out["majority_vote_ci"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0

    class LastIsBest:  # a "reward model" that always prefers the last candidate
        def score(self, examples: list[Example], prompts: list[object], texts: list[str]) -> list[float]:
            return [float(i) for i in range(len(texts))]

    best = t.baselines(t.examples("test", 4, seed=0), seed=0, reward_model=LastIsBest())
    assert best["best_of_m"] == pytest.approx(0.5)  # last candidate: wrong on easy problems, right on hard ones


def test_config_needs_the_candidate_model() -> None:
    with pytest.raises(ConfigError, match="data.aggregation.candidates_from"):
        load_config(None, ["data.task=aggregation"])
    with pytest.raises(ConfigError, match="data.aggregation.hard_fraction"):
        load_config(
            None, ["data.task=aggregation", "data.aggregation.candidates_from=x", "data.aggregation.hard_fraction=1"]
        )
