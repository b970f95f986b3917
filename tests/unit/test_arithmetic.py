"""The built-in task: splits, demonstrations and the verifier."""

from __future__ import annotations

from posttrain.config import ArithmeticConfig
from posttrain.tasks.arithmetic import ArithmeticTask, extract_answer


def test_demonstrations_are_correct_and_verified() -> None:
    task = ArithmeticTask(ArithmeticConfig(num_operands=3, digits=2))
    for ex in task.examples("train", 50, seed=1):
        assert ex.completion is not None and ex.answer is not None
        assert eval(ex.id) == int(ex.answer)  # left-to-right is Python's order for + and -
        assert task.verify(ex, ex.completion) == 1.0
        assert task.verify(ex, ex.completion.replace(f"#{ex.answer}", f"#{int(ex.answer) + 1}")) == 0.0


def test_worked_example_by_hand() -> None:
    task = ArithmeticTask(ArithmeticConfig(num_operands=3, digits=2))
    ex = next(e for e in task.examples("train", 200, seed=0) if "-" in e.id)
    steps = ex.completion.splitlines()
    assert len(steps) == 3 and steps[-1] == f"#{ex.answer}"
    assert ex.prompt == f"{ex.id}=?\n"


def test_splits_are_disjoint_and_seeded() -> None:
    task = ArithmeticTask(ArithmeticConfig(num_operands=2, digits=2))
    train = {e.id for e in task.examples("train", 2000, seed=0)}
    test = [e.id for e in task.examples("test", 200, seed=0)]
    assert not train & set(test)
    assert len(set(test)) == len(test)  # test problems are distinct
    assert test == [e.id for e in task.examples("test", 200, seed=0)]
    assert test != [e.id for e in task.examples("test", 200, seed=1)]


def test_direct_fraction_mixes_styles() -> None:
    task = ArithmeticTask(ArithmeticConfig(num_operands=3, digits=1, direct_fraction=0.5))
    demos = [e.completion for e in task.examples("train", 400, seed=0)]
    direct = sum(d.startswith("#") for d in demos if d)
    assert 150 < direct < 250


def test_extract_answer() -> None:
    assert extract_answer("3+4=7\n7-9=-2\n#-2") == "-2"
    assert extract_answer("no marker 12 then 15") == "15"
    assert extract_answer("#07") == "7"
    assert extract_answer("nothing") is None
