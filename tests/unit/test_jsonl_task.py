"""The JSONL task: every format and row shape it reads, its splits, and its errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from posttrain.errors import ConfigError, DataError
from posttrain.tasks.base import Example
from posttrain.tasks.jsonl import JsonlTask


def write_jsonl(path: Path, rows: list[Any]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def write_lines(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def qa_rows(n: int) -> list[dict[str, Any]]:
    return [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(n)]


def all_rows(task: JsonlTask) -> list[Example]:
    return task.examples("train", None, 0) + task.examples("test", None, 0)


def load_error(path: str, **kwargs: Any) -> DataError:
    with pytest.raises(DataError) as info:
        JsonlTask(path, **kwargs)
    return info.value


# --- formats and shapes ----------------------------------------------------------


def test_prompt_answer_rows(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "qa.jsonl",
        [
            json.dumps({"prompt": "2+2?", "answer": "4"}),
            "",  # blank lines are skipped but still counted
            json.dumps({"prompt": "3*3?", "answer": 9, "extra": "ignored"}),
            json.dumps({"prompt": "half of 141?", "answer": 70.5}),
            json.dumps({"prompt": "70.0 as a float column", "answer": 70.0}),
        ],
    )
    task = JsonlTask(path, eval_path=path)
    rows = task.examples("train", None, 0)
    assert rows[0] == Example(id="qa.jsonl:1", prompt="2+2?", answer="4", completion=None, source=f"{path}:1")
    assert [(r.id, r.answer) for r in rows] == [
        ("qa.jsonl:1", "4"),
        ("qa.jsonl:3", "9"),
        ("qa.jsonl:4", "70.5"),
        ("qa.jsonl:5", "70"),
    ]
    assert rows[1].source == f"{path}:3"
    assert task.name == "jsonl"
    assert task.prompt(rows[0]) == "2+2?"


def test_prompt_completion_rows_take_the_answer_from_the_completion(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "sft.jsonl",
        [
            {"prompt": "2+3?", "completion": "2+3=5\n#5"},
            {"prompt": "7-2?", "completion": "it is five", "answer": "5"},
            {"prompt": "hello", "completion": "hi there"},
        ],
    )
    rows = JsonlTask(path, eval_path=path).examples("train", None, 0)
    assert [(r.completion, r.answer) for r in rows] == [
        ("2+3=5\n#5", "5"),
        ("it is five", "5"),  # a given answer wins over extraction
        ("hi there", None),  # nothing to extract
    ]


def test_extraction_follows_the_verifier(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "sft.jsonl", [{"prompt": "p", "completion": "  so the answer is \\boxed{\\frac{1}{2}}"}]
    )
    exact = JsonlTask(path, verifier="exact", eval_path=path).examples("train", None, 0)[0]
    maths = JsonlTask(path, verifier="math_verify", eval_path=path).examples("train", None, 0)[0]
    assert exact.answer == "so the answer is \\boxed{\\frac{1}{2}}"
    assert maths.answer == "1/2"


def test_messages_rows(tmp_path: Path) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 6*7?"},
        {"role": "assistant", "content": "6*7 = 42"},
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": messages}, {"messages": messages, "answer": "41"}])
    first, second = JsonlTask(path, eval_path=path).examples("train", None, 0)
    assert first.prompt == messages[:2]
    assert first.completion == "6*7 = 42"
    assert first.answer == "42"
    assert second.answer == "41"


def test_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "mixed.parquet"
    table = pa.Table.from_pylist(
        [
            {"prompt": "2+2?", "answer": "4", "completion": None},
            {"prompt": "say 5", "answer": None, "completion": "5"},  # a null cell is an absent field
        ]
    )
    pq.write_table(table, path)
    rows = JsonlTask(str(path), eval_path=str(path)).examples("train", None, 0)
    assert [(r.id, r.source, r.prompt, r.answer, r.completion) for r in rows] == [
        ("mixed.parquet:1", f"{path}:1", "2+2?", "4", None),
        ("mixed.parquet:2", f"{path}:2", "say 5", "5", "5"),
    ]


def test_parquet_messages(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "chat.parquet"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello 1"}]
    pq.write_table(pa.Table.from_pylist([{"messages": messages}]), path)
    (row,) = JsonlTask(str(path), eval_path=str(path)).examples("train", None, 0)
    assert row.prompt == messages[:1]
    assert row.completion == "hello 1"


def test_datasets_directory(tmp_path: Path) -> None:
    import datasets

    path = tmp_path / "ds"
    datasets.Dataset.from_list(qa_rows(50)).save_to_disk(str(path))
    task = JsonlTask(str(path))
    rows = all_rows(task)
    assert sorted(r.id for r in rows) == sorted(f"ds:{i}" for i in range(1, 51))
    first = next(r for r in rows if r.id == "ds:1")
    assert (first.prompt, first.answer, first.source) == ("What is 0 + 0?", "0", f"{path}:1")


def test_datasets_dict_uses_its_train_and_test_splits(tmp_path: Path) -> None:
    import datasets

    path = tmp_path / "dd"
    rows = qa_rows(5)
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:3]), "test": datasets.Dataset.from_list(rows[3:])}
    ).save_to_disk(str(path))
    task = JsonlTask(str(path))
    assert [r.prompt for r in task.examples("train", None, 0)] == [r["prompt"] for r in rows[:3]]
    test = task.examples("test", None, 0)
    assert [r.prompt for r in test] == [r["prompt"] for r in rows[3:]]
    assert (test[0].id, test[0].source) == ("dd/test:1", f"{path / 'test'}:1")


def test_datasets_dict_without_train(tmp_path: Path) -> None:
    import datasets

    path = tmp_path / "dd"
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(qa_rows(2))}).save_to_disk(str(path))
    assert str(load_error(str(path))) == f"{path}: the datasets directory has no 'train' split (found: validation)"


# --- splits and sampling ---------------------------------------------------------


def test_hash_split_is_disjoint_complete_and_stable(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", qa_rows(1000))
    task = JsonlTask(path)
    train = task.examples("train", None, 0)
    test = task.examples("test", None, 0)
    assert {r.prompt for r in train}.isdisjoint(r.prompt for r in test)
    assert len(train) + len(test) == 1000
    assert 60 <= len(test) <= 140  # about test_fraction = 0.1
    # file order within each split, and the same split when loaded again
    assert [r.id for r in train] == sorted((r.id for r in train), key=lambda i: int(i.split(":")[1]))
    again = JsonlTask(path)
    assert [r.id for r in again.examples("test", None, 0)] == [r.id for r in test]


def test_hash_split_follows_the_prompt_not_the_line(tmp_path: Path) -> None:
    rows = qa_rows(300)
    task = JsonlTask(write_jsonl(tmp_path / "a.jsonl", rows))
    reversed_task = JsonlTask(write_jsonl(tmp_path / "b.jsonl", rows[::-1]))
    assert {r.prompt for r in task.examples("test", None, 0)} == {
        r.prompt for r in reversed_task.examples("test", None, 0)
    }
    # a repeated prompt lands on one side only, so test never leaks into train
    dup = JsonlTask(write_jsonl(tmp_path / "dup.jsonl", rows + rows))
    assert {r.prompt for r in dup.examples("train", None, 0)}.isdisjoint(
        r.prompt for r in dup.examples("test", None, 0)
    )


def test_test_fraction(tmp_path: Path) -> None:
    task = JsonlTask(write_jsonl(tmp_path / "qa.jsonl", qa_rows(1000)), test_fraction=0.5)
    assert 400 <= len(task.examples("test", None, 0)) <= 600
    with pytest.raises(ValueError, match="test_fraction"):
        JsonlTask(str(tmp_path / "qa.jsonl"), test_fraction=1.0)
    # 0 (data.heldout_fraction=0): every row trains; asking for the empty test split says so
    every = JsonlTask(str(tmp_path / "qa.jsonl"), test_fraction=0.0)
    assert len(every.examples("train", None, 0)) == 1000
    with pytest.raises(DataError, match=r"test split is empty \(1000 rows, data.heldout_fraction=0.0\)"):
        every.examples("test", None, 0)


def test_eval_path_is_the_test_split(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", qa_rows(10))
    held_out = write_jsonl(tmp_path / "held.jsonl", [{"prompt": "held out", "answer": "1"}])
    task = JsonlTask(train, eval_path=held_out)
    assert len(task.examples("train", None, 0)) == 10
    (only,) = task.examples("test", None, 0)
    assert (only.id, only.source) == ("held.jsonl:1", f"{held_out}:1")


def test_sampling_is_seeded_and_bounded(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", qa_rows(40))
    task = JsonlTask(path, eval_path=path)
    a = task.examples("train", 10, seed=1)
    assert len(a) == 10 and len({r.id for r in a}) == 10
    assert [r.id for r in task.examples("train", 10, seed=1)] == [r.id for r in a]
    assert [r.id for r in task.examples("train", 10, seed=2)] != [r.id for r in a]
    everything = task.examples("train", 100, seed=1)
    assert sorted(r.id for r in everything) == sorted(r.id for r in task.examples("train", None, 0))
    assert [r.id for r in everything] != [r.id for r in task.examples("train", None, 0)]  # shuffled


def test_empty_split_is_an_error(tmp_path: Path) -> None:
    # one row lands on one side of the split, leaving the other empty
    path = write_jsonl(tmp_path / "one.jsonl", [{"prompt": "only row", "answer": "1"}])
    task = JsonlTask(path)
    errors = []
    for split in ("train", "test"):
        try:
            assert len(task.examples(split, None, 0)) == 1
        except DataError as err:
            errors.append(str(err))
    assert len(errors) == 1
    assert errors[0].startswith(f"{path}: the ")
    assert (
        "split is empty (1 row, data.heldout_fraction=0.1): add rows or give a held-out file (data.eval_path)"
        in errors[0]
    )


def test_verify(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "qa.jsonl", [{"prompt": "2+2?", "answer": "4"}, {"prompt": "greet", "completion": "hi"}]
    )
    with_answer, without = JsonlTask(path, eval_path=path).examples("train", None, 0)
    assert JsonlTask(path, eval_path=path).verify(with_answer, "the sum is 4.") == 1.0
    assert JsonlTask(path, eval_path=path).verify(with_answer, "the sum is 5.") == 0.0
    assert JsonlTask(path, eval_path=path).verify(without, "hi") == 0.0


def test_unknown_verifier(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", qa_rows(2))
    with pytest.raises(ConfigError, match=r"^data.verifier: unknown verifier 'regex'"):
        JsonlTask(path, verifier="regex")


# --- bad input -------------------------------------------------------------------

SHAPES = "(expected {prompt, answer}, {prompt, completion}, {messages} or {text})"
GOOD = json.dumps({"prompt": "p", "answer": "1"})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "p", "answer": ', "malformed JSON: Expecting value (column 27)"),
        ('{"prompt": "p" "answer": "1"}', "malformed JSON: Expecting ',' delimiter (column 16)"),
        ('["prompt", "answer"]', "expected a JSON object, got list"),
        ('"just a string"', "expected a JSON object, got str"),
        ('{"answer": "1"}', f"prompt: missing field 'prompt' {SHAPES}"),
        ('{"question": "p", "answer": "1"}', f"prompt: missing field 'prompt' {SHAPES}"),
        ('{"prompt": "p"}', f"answer: missing field 'answer' {SHAPES}"),
        ('{"prompt": 7, "answer": "1"}', "prompt: expected a string, got int"),
        ('{"prompt": null, "answer": "1"}', "prompt: expected a string, got null"),
        ('{"prompt": "p", "completion": ["a"]}', "completion[0]: expected a {role, content} object, got str"),
        ('{"prompt": "p", "completion": 3}', "completion: expected a string or a list of messages, got int"),
        (
            '{"prompt": "p", "completion": [{"role": "user", "content": "a"}]}',
            "completion[0].role: expected role 'assistant', got 'user'",
        ),
        ('{"text": ""}', "text: the text is empty"),
        ('{"text": 4}', "text: expected a string, got int"),
        ('{"prompt": "p", "answer": true}', "answer: expected a string or a number, got bool"),
        ('{"prompt": "p", "answer": {"value": 1}}', "answer: expected a string or a number, got dict"),
        ('{"messages": "hi"}', "messages: expected a list of {role, content} objects, got str"),
        (
            '{"messages": [{"role": "assistant", "content": "a"}]}',
            "messages: expected at least one message before the assistant's reply",
        ),
        (
            '{"messages": [{"role": "user", "content": "q"}, "a"]}',
            "messages[1]: expected a {role, content} object, got str",
        ),
        (
            '{"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}',
            "messages[0].content: missing field 'content'",
        ),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},'
            ' {"role": "user", "content": 3}]}',
            "messages[2].content: expected a string, got int",
        ),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "a"}]}',
            "messages[1].role: the last message must be the assistant's reply, got role 'user'",
        ),
        (
            '{"prompt": "p", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',
            "prompt: a row has either 'prompt' or 'messages', not both",
        ),
    ],
)
def test_bad_row_names_file_line_and_field(tmp_path: Path, line: str, message: str) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, "", line, GOOD])
    assert str(load_error(path)) == f"{path}:3: {message}"


def test_bad_row_fields_are_structured(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, GOOD, '{"prompt": 7, "answer": "1"}'])
    err = load_error(path)
    assert (err.file, err.line, err.field, err.message) == (path, 3, "prompt", "expected a string, got int")


def test_bad_row_in_eval_path_names_that_file(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", qa_rows(3))
    held_out = write_lines(tmp_path / "held.jsonl", [GOOD, '{"prompt": "p"}'])
    assert str(load_error(train, eval_path=held_out)) == f"{held_out}:2: answer: missing field 'answer' {SHAPES}"


def test_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + '{"prompt": "caf\xe9", "answer": "1"}\n'.encode("latin-1"))
    assert str(load_error(str(path))).startswith(f"{path}:2: not valid UTF-8")


def test_bad_row_in_parquet_names_the_row(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "p", "answer": "1"}, {"prompt": None, "answer": "2"}]), path)
    assert str(load_error(str(path))) == f"{path}:2: prompt: missing field 'prompt' {SHAPES}"


def test_empty_file(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "empty.jsonl", ["", "   "])
    err = load_error(path)
    assert str(err) == f"{path}: no rows"
    assert err.line is None


def test_empty_eval_file(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", qa_rows(3))
    held_out = write_lines(tmp_path / "held.jsonl", [])
    assert str(load_error(train, eval_path=held_out)) == f"{held_out}: no rows"


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.jsonl")
    assert str(load_error(path)) == f"{path}: file not found"


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("prompt,answer\np,1\n")
    assert str(load_error(str(path))) == (
        f"{path}: unsupported file type '.csv': expected a .jsonl file, a .parquet file "
        "or a datasets directory saved with save_to_disk"
    )


def test_unsupported_directory(tmp_path: Path) -> None:
    path = tmp_path / "not_a_dataset"
    path.mkdir()
    assert str(load_error(str(path))) == (
        f"{path}: unsupported directory: expected a .jsonl file, a .parquet file "
        "or a datasets directory saved with save_to_disk"
    )


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet")
    assert str(load_error(str(path))).startswith(f"{path}: cannot read Parquet: ")


# --- TRL's shapes: {text}, conversational prompt-completion, multi-turn {messages} --------


def test_text_rows_are_language_modelling(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "lm.jsonl", [{"text": f"Sentence number {i}."} for i in range(100)])
    task = JsonlTask(path)
    rows = all_rows(task)
    assert {(r.prompt, r.answer) for r in rows} == {("", None)}
    assert sorted(r.completion or "" for r in rows) == sorted(f"Sentence number {i}." for i in range(100))
    assert 0 < task.count("test") < 30  # split by each row's text, not all in one split by the empty prompt


def test_conversational_prompt_completion_rows(tmp_path: Path) -> None:
    user = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"}]
    reply = [{"role": "assistant", "content": "4"}]
    path = write_jsonl(
        tmp_path / "conv.jsonl",
        [
            {"prompt": user, "completion": reply},
            {"prompt": "3+3?", "completion": [{"role": "assistant", "content": "6"}]},
            {"prompt": user, "completion": "#4"},
            {"prompt": user, "answer": "4"},  # RL: a chat prompt and its gold answer
        ],
    )
    rows = JsonlTask(path, eval_path=path).examples("train", None, 0)
    assert [(r.prompt, r.completion, r.answer) for r in rows] == [
        (user, "4", "4"),
        ([{"role": "user", "content": "3+3?"}], "6", "6"),  # a string prompt with a message reply: one user turn
        (user, "#4", "4"),
        (user, None, "4"),
    ]
    assert not any(r.train_prompt_replies for r in rows)


def test_multi_turn_rows_train_every_assistant_turn_unless_told_otherwise(tmp_path: Path) -> None:
    turns = [
        {"role": "user", "content": "1+2?"},
        {"role": "assistant", "content": "#3"},
        {"role": "user", "content": "+4?"},
        {"role": "assistant", "content": "#7"},
    ]
    single = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "#2"}]
    opening = [{"role": "assistant", "content": "Hi!"}, *single]  # a greeting with nothing before it
    prior = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [{"messages": turns}, {"messages": single}, {"messages": opening}, {"prompt": prior, "completion": "b"}],
    )
    rows = JsonlTask(path, eval_path=path).examples("train", None, 0)
    assert rows[0].prompt == turns[:-1] and rows[0].completion == "#7"
    assert [r.train_prompt_replies for r in rows] == [True, False, False, False]
    last = JsonlTask(path, eval_path=path, train_on="last_assistant").examples("train", None, 0)
    assert not any(r.train_prompt_replies for r in last)
    assert [(r.prompt, r.completion) for r in last] == [(r.prompt, r.completion) for r in rows]


def test_whole_file_makes_every_row_a_test_row(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", qa_rows(50))
    task = JsonlTask(path, whole_file=True)
    assert task.count("test") == 50 and task.count("train") == 0 and task.test_file == path
    with pytest.raises(DataError) as err:
        task.examples("train", None, 0)
    assert str(err.value) == f"{path}: this task holds an evaluation file: every row is a test row"
    split = JsonlTask(path)
    assert split.count("train") + split.count("test") == 50 and split.count("test") < 50
