"""Benchmark adapters (GSM8K, MATH, multiple choice) and the answer checkers they bring."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from posttrain.errors import DataError
from posttrain.tasks.formats import last_boxed
from posttrain.tasks.jsonl import JsonlTask
from posttrain.tasks.verifiers import VERIFIERS, choice_extract, math_verify_judge


def write(tmp_path: Path, rows: list[Any], name: str = "d.jsonl") -> str:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def load(path: str, format: str, **kwargs: Any) -> JsonlTask:
    return JsonlTask(path, format=format, eval_path=path, **kwargs)


def test_gsm8k_rows(tmp_path: Path) -> None:
    solution = "She has 48/2 = <<48/2=24>>24 clips.\nIn all 48+24 = <<48+24=72>>72.\n#### 1,072"
    task = load(write(tmp_path, [{"question": "How many clips?", "answer": solution}]), "gsm8k")
    [ex] = task.examples("test", None, 0)
    assert ex.prompt == "How many clips?\n" and ex.answer == "1072"
    assert ex.completion == "She has 48/2 = 24 clips.\nIn all 48+24 = 72.\n#### 1,072"  # no calculator notes
    assert task.verifier.name == "last_number"
    assert task.verify(ex, "so #### 1072") == 1.0 and task.verify(ex, "#### 72") == 0.0


def test_math_rows_take_the_last_boxed_answer(tmp_path: Path) -> None:
    rows = [
        {"problem": "Half of one?", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "level": "Level 1"},
        {"problem": "Two?", "solution": "Clearly 2.", "answer": "2"},
    ]
    task = load(write(tmp_path, rows), "math")
    a, b = task.examples("test", None, 0)
    assert a.answer == "\\frac{1}{2}" and a.completion == rows[0]["solution"]
    assert b.answer == "2"
    assert task.verifier.name == "math_verify"
    assert task.verify(a, "so $\\boxed{0.5}$") == 1.0


def test_last_boxed() -> None:
    assert last_boxed("$\\boxed{1}$ then $\\boxed{\\frac{a}{b}}$") == "\\frac{a}{b}"
    assert last_boxed("\\fbox{x^{2}}") == "x^{2}"
    assert last_boxed("so \\boxed 5.") == "5"
    assert last_boxed("\\boxed{unclosed") is None
    assert last_boxed("nothing") is None


@pytest.mark.parametrize(
    ("row", "gold"),
    [
        ({"question": "Q", "choices": ["x", "y", "z"], "answer": 2}, "C"),  # MMLU: 0-based index
        ({"question": "Q", "choices": ["x", "y"], "answer": "B"}, "B"),
        ({"question": "Q", "choices": {"label": ["A", "B"], "text": ["x", "y"]}, "answerKey": "A"}, "A"),  # ARC
        ({"question": "Q", "choices": {"A": "x", "B": "y"}, "answer": "(b)"}, "B"),
    ],
)
def test_mc_rows(tmp_path: Path, row: dict[str, Any], gold: str) -> None:
    task = load(write(tmp_path, [row]), "mc")
    [ex] = task.examples("test", None, 0)
    assert ex.answer == gold and ex.completion is None
    assert ex.prompt.startswith("Q\nA. x\nB. y") and str(ex.prompt).endswith("\nAnswer:")
    assert task.verify(ex, f"The answer is ({gold}).") == 1.0
    assert task.verify(ex, "The answer is (Z).") == 0.0


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        ("(C)", "C"),
        ("The answer is (D).", "D"),
        ("Answer: A", "A"),
        ("the answer is a bit unclear, so (B)", "B"),
        ("$\\boxed{\\text{C}}$", "C"),
        ("B) because", "B"),
        ("A train leaves at noon", None),  # the article is not an answer
        ("", None),
    ],
)
def test_choice_extract(text: str, letter: str | None) -> None:
    assert choice_extract(text) == letter


# gold first, as math_verify needs: (gold, prediction, equivalent?)
MATH_TABLE = [
    # fractions
    ("\\frac{1}{2}", "The answer is $\\boxed{\\frac{1}{2}}$", True),
    ("\\frac{1}{2}", "$\\boxed{0.5}$", True),
    ("\\frac{1}{2}", "$\\boxed{\\dfrac12}$", True),
    ("\\frac{1}{2}", "$\\boxed{2/4}$", True),
    ("\\frac{1}{2}", "$\\boxed{\\frac{1}{3}}$", False),
    ("\\frac{3}{4}", "$\\boxed{\\frac{4}{3}}$", False),
    ("0.1", "$\\boxed{\\frac{1}{10}}$", True),
    # LaTeX forms
    ("2\\sqrt{2}", "$\\boxed{\\sqrt{8}}$", True),
    ("x^2+2x+1", "$\\boxed{(x+1)^2}$", True),
    ("1000", "$\\boxed{1{,}000}$", True),
    ("\\pi", "$\\boxed{3.14}$", False),
    # units and currency
    ("10", "$\\boxed{10\\text{ cm}}$", True),
    ("10\\text{ cm}", "$\\boxed{10}$", True),
    ("10", "$\\boxed{10^\\circ}$", True),
    ("\\$12", "$\\boxed{12}$", True),  # an escaped dollar in the gold is currency, not a delimiter
    ("\\$12", "$\\boxed{13}$", False),
    ("50\\%", "$\\boxed{50}$", True),
    # sets, tuples, intervals
    ("\\{1,2,3\\}", "$\\boxed{\\{3,2,1\\}}$", True),
    ("\\{1,2,3\\}", "$\\boxed{\\{1,2\\}}$", False),
    ("(1,2)", "$\\boxed{(2,1)}$", False),
    ("[0,1)", "$\\boxed{[0,1)}$", True),
    ("[0,1)", "$\\boxed{[0,1]}$", False),
    # negative numbers
    ("-5", "$\\boxed{-5}$", True),
    ("-5", "$\\boxed{5}$", False),
    ("5", "$\\boxed{-5}$", False),
    ("-\\frac{2}{3}", "$\\boxed{-\\frac{2}{3}}$", True),
    ("-\\frac{2}{3}", "$\\boxed{\\frac{2}{3}}$", False),
    ("-3", "The answer is $-3$.", True),
]


@pytest.mark.parametrize(("gold", "text", "equivalent"), MATH_TABLE)
def test_math_verify_table(gold: str, text: str, equivalent: bool) -> None:
    answer, score = math_verify_judge(gold, text)
    assert score == float(equivalent)
    assert answer is not None
    assert VERIFIERS["math_verify"].check(gold, text) == float(equivalent)  # the reward agrees


def test_math_verify_judge_and_check_raise_on_a_gold_that_does_not_parse() -> None:
    with pytest.raises(ValueError, match="does not parse"):
        math_verify_judge("", "$\\boxed{1}$")
    with pytest.raises(ValueError, match="does not parse"):  # unscored, never a 0
        VERIFIERS["math_verify"].check("", "$\\boxed{1}$")
    assert math_verify_judge("1", "no maths here") == (None, 0.0)  # no answer is a wrong answer, not an error


@pytest.mark.parametrize(
    ("format", "row", "field", "message"),
    [
        ("gsm8k", {"question": "Q", "answer": "no marker"}, "answer", "no '#### <answer>' line"),
        ("gsm8k", {"question": "Q", "answer": "steps\n####  "}, "answer", "nothing after '####'"),
        ("gsm8k", {"answer": "#### 1"}, "question", "missing field 'question'"),
        ("gsm8k", {"question": 3, "answer": "#### 1"}, "question", "expected a string, got int"),
        ("math", {"problem": "P", "solution": "no box"}, "solution", "no \\boxed{...} answer"),
        ("math", {"problem": "P"}, "answer", "missing field 'answer'"),
        ("math", {"solution": "\\boxed{1}"}, "problem", "missing field 'problem'"),
        ("mc", {"question": "Q", "choices": ["x", "y"], "answer": 5}, "answer", "index 5 is out of range"),
        ("mc", {"question": "Q", "choices": ["x", "y"], "answer": "E"}, "answer", "expected one of A, B"),
        ("mc", {"question": "Q", "choices": ["x"], "answer": "A"}, "choices", "at least two options"),
        ("mc", {"question": "Q", "choices": "x,y", "answer": "A"}, "choices", "expected labelled options"),
        ("mc", {"question": "Q", "choices": 3, "answer": "A"}, "choices", "expected a list or a mapping"),
        ("mc", {"question": "Q", "choices": ["x", 2], "answer": "A"}, "choices[1]", "a letter and a string"),
        ("mc", {"question": "Q", "answer": "A"}, "choices", "missing field 'choices'"),
    ],
)
def test_malformed_rows_name_file_line_and_field(
    tmp_path: Path, format: str, row: dict[str, Any], field: str, message: str
) -> None:
    good = {
        "gsm8k": {"question": "Q", "answer": "#### 1"},
        "math": {"problem": "P", "answer": "1"},
        "mc": {"question": "Q", "choices": ["x", "y"], "answer": "A"},
    }[format]
    path = write(tmp_path, [good, "", row])  # line 2 is blank: the bad row is on line 3
    with pytest.raises(DataError) as info:
        JsonlTask(path, format=format)
    assert (info.value.file, info.value.line, info.value.field) == (path, 3, field)
    assert message in info.value.message
    assert str(info.value).startswith(f"{path}:3: {field}: ")


def test_a_non_object_row_and_an_unknown_format(tmp_path: Path) -> None:
    path = write(tmp_path, [[1, 2]])
    with pytest.raises(DataError, match=r":1: expected a JSON object with question and answer, got list"):
        JsonlTask(path, format="gsm8k")
    from posttrain.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown data format 'gsm9k'"):
        JsonlTask(path, format="gsm9k")


def test_auto_verifier_follows_the_format_and_an_explicit_one_wins(tmp_path: Path) -> None:
    path = write(tmp_path, [{"question": "Q", "answer": "#### 1"}])
    assert JsonlTask(path, format="gsm8k").verifier.name == "last_number"
    assert JsonlTask(write(tmp_path, [{"prompt": "Q", "answer": "1"}], "p.jsonl")).verifier.name == "last_number"
    assert JsonlTask(path, verifier="math_verify", format="gsm8k").verifier.name == "math_verify"


FIXTURES = Path(__file__).parent.parent / "fixtures"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("A) 12 B) 15 C) 18", ["12", "15", "18"]),
        ("a ) 38 , b ) 27.675 , c ) data inadequate", ["38", "27.675", "data inadequate"]),  # MathQA
        ("(A) vitamin C (B) iron\n(C) zinc", ["vitamin C", "iron", "zinc"]),  # a letter inside an option
        ("A. one\nB. two", ["one", "two"]),
        ("A: x; B: y", ["x", "y"]),
    ],
)
def test_mc_options_in_one_string(tmp_path: Path, options: str, expected: list[str]) -> None:
    task = load(write(tmp_path, [{"question": "Which?", "options": options, "answer": "b"}]), "mc")
    [ex] = task.examples("test", None, 0)
    letters = "ABC"[: len(expected)]
    assert ex.prompt == "\n".join(["Which?", *(f"{k}. {t}" for k, t in zip(letters, expected)), "Answer:"])
    assert ex.answer == "B"
    assert task.verify(ex, "The answer is (B).") == 1.0


def test_the_real_gsm8k_slice(tmp_path: Path) -> None:
    """The first rows of GSM8K's test file as they are (tests/fixtures/README.md)."""
    path = str(FIXTURES / "gsm8k_test_4.jsonl")
    task = JsonlTask(path, format="gsm8k", eval_path=path)
    rows = task.examples("test", None, 0)
    assert [ex.answer for ex in rows] == ["18", "3", "70000", "540"]
    assert all(isinstance(ex.prompt, str) and ex.prompt.endswith("?\n") for ex in rows)
    assert all(
        ex.completion and "<<" not in ex.completion and ex.completion.endswith(f"#### {ex.answer}") for ex in rows
    )
    assert [task.verify(ex, f"so the answer is {ex.answer}") for ex in rows] == [1.0] * 4
