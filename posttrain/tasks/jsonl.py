"""A task over the user's own data: JSONL, Parquet or a saved ``datasets`` directory.

Every row becomes one ``Example``. Three row shapes are accepted, so one file format
serves SFT, GRPO and evaluation::

    {"prompt": "...", "answer": "42"}                  # RL / eval: a question and its gold answer
    {"prompt": "...", "completion": "...", ...}        # SFT: a demonstration (+ optional "answer")
    {"messages": [{"role": ..., "content": ...}, ...]}  # SFT, chat: the last message is the reply

Those are ``data.format: plain``; the shapes of common benchmarks (GSM8K, MATH,
multiple choice) are read by ``posttrain.tasks.formats``.

Rows are read and checked once, when the task is built, so a bad row stops a run
before any training with one line naming its file, line and field. When no held-out
file is given, the test split is chosen by a stable hash of each prompt: disjoint
from train, the same on every run and machine, and the same for repeated prompts.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.errors import DataError
from posttrain.tasks.arithmetic import in_test_split
from posttrain.tasks.base import Example, Message, Prompt, Split
from posttrain.tasks.verifiers import Verifier, get_verifier

SHAPES = "{prompt, answer}, {prompt, completion} or {messages}"
SUPPORTED = "a .jsonl file, a .parquet file or a datasets directory saved with save_to_disk"


@dataclass(frozen=True)
class _Rows:
    """Raw rows of one file (or one split of a datasets directory), with their numbers."""

    label: str  # what errors and Example.source name: the path as given
    id_prefix: str  # what Example.id starts with: the file's base name
    rows: list[tuple[int, Any]]  # (1-based line or row number, decoded row)


# --- reading ---------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _read_jsonl(path: str) -> Iterator[tuple[int, Any]]:
    # read bytes and decode per line, so even an encoding error names its line
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"not valid UTF-8 ({e.reason})", file=path, line=line_no) from None
            if not text.strip():
                continue
            try:
                yield line_no, json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                raise DataError(f"malformed JSON: {e.msg} (column {e.colno})", file=path, line=line_no) from None


def _drop_nulls(row: Any) -> Any:
    # columnar formats share one schema: a null cell means "this row has no such field"
    return {k: v for k, v in row.items() if v is not None} if isinstance(row, dict) else row


def _numbered(rows: list[Any]) -> list[tuple[int, Any]]:
    return [(i, _drop_nulls(row)) for i, row in enumerate(rows, start=1)]


def _read_parquet(path: str) -> list[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"cannot read Parquet: {e}", file=path) from None
    return _numbered(table.to_pylist())


def _read_datasets_dir(path: str) -> dict[str, _Rows]:
    """``{"train": ...}`` for a ``Dataset``; its ``train`` and ``test`` for a ``DatasetDict``."""
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except Exception:
        raise DataError(f"unsupported directory: expected {SUPPORTED}", file=path) from None
    name = Path(path).name
    if isinstance(loaded, datasets.Dataset):
        return {"train": _Rows(path, name, _numbered(loaded.to_list()))}
    if "train" not in loaded:
        found = ", ".join(sorted(loaded))
        raise DataError(f"the datasets directory has no 'train' split (found: {found})", file=path)
    # each split is its own directory on disk: errors point at the one holding the row
    return {
        split: _Rows(str(Path(path) / split), f"{name}/{split}", _numbered(loaded[split].to_list()))
        for split in ("train", "test")
        if split in loaded
    }


def _read(path: str) -> dict[str, _Rows]:
    """Raw rows of ``path``: a ``train`` entry always, a ``test`` one when the data has it."""
    p = Path(path)
    if not p.exists():
        raise DataError("file not found", file=path)
    if p.is_dir():
        found = _read_datasets_dir(path)
    elif p.suffix == ".jsonl":
        found = {"train": _Rows(path, p.name, list(_read_jsonl(path)))}
    elif p.suffix == ".parquet":
        found = {"train": _Rows(path, p.name, _read_parquet(path))}
    else:
        raise DataError(f"unsupported file type {p.suffix or '(none)'!r}: expected {SUPPORTED}", file=path)
    for rows in found.values():
        if not rows.rows:
            raise DataError("no rows", file=rows.label)
    return found


# --- validating ------------------------------------------------------------------


class _RowError(Exception):
    """A problem in one row; the caller adds the file and line to make a DataError."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _string(row: dict[str, Any], key: str) -> str:
    value = row[key]
    if not isinstance(value, str):
        raise _RowError(key, f"expected a string, got {_type_name(value)}")
    return value


def _answer(row: dict[str, Any]) -> str | None:
    """The gold answer as text; absent or null means the row has none."""
    value = row.get("answer")
    if value is None or isinstance(value, str):
        return value
    # bool is an int to Python, but a true/false answer is a data mistake
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # 70.0 from a float column is the answer 70; the exact verifier would miss it
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return str(int(value))
        return str(value)
    raise _RowError("answer", f"expected a string or a number, got {_type_name(value)}")


def _messages(row: dict[str, Any]) -> tuple[list[Message], str]:
    """(prompt messages, assistant reply) of a ``messages`` row."""
    value = row["messages"]
    if isinstance(value, list) and len(value) < 2:
        raise _RowError("messages", "expected at least one message before the assistant's reply")
    messages = _message_list(value, "messages")
    last = messages[-1]["role"]
    if last != "assistant":
        where = f"messages[{len(messages) - 1}].role"
        raise _RowError(where, f"the last message must be the assistant's reply, got role {last!r}")
    return messages[:-1], messages[-1]["content"]


def _message_list(value: Any, name: str) -> list[Message]:
    """``value`` checked as a non-empty list of ``{role, content}`` strings; errors name ``name[i].field``."""
    if not isinstance(value, list):
        raise _RowError(name, f"expected a list of {{role, content}} objects, got {_type_name(value)}")
    if not value:
        raise _RowError(name, "expected at least one message")
    messages: list[Message] = []
    for i, message in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(message, dict):
            raise _RowError(where, f"expected a {{role, content}} object, got {_type_name(message)}")
        for key in ("role", "content"):
            if key not in message:
                raise _RowError(f"{where}.{key}", f"missing field {key!r}")
            if not isinstance(message[key], str):
                raise _RowError(f"{where}.{key}", f"expected a string, got {_type_name(message[key])}")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def _parse_row(row: Any, verifier: Verifier) -> tuple[Prompt, str | None, str | None]:
    """(prompt, answer, completion) of one row, or a ``_RowError``."""
    if not isinstance(row, dict):
        raise _RowError(None, f"expected a JSON object, got {_type_name(row)}")
    prompt: Prompt
    completion: str | None
    if "messages" in row:
        if "prompt" in row:
            raise _RowError("prompt", "a row has either 'prompt' or 'messages', not both")
        prompt, completion = _messages(row)
    elif "prompt" in row:
        prompt = _string(row, "prompt")
        if "completion" in row:
            completion = _string(row, "completion")
        elif "answer" in row:
            completion = None
        else:
            raise _RowError("answer", f"missing field 'answer' (expected {SHAPES})")
    else:
        raise _RowError("prompt", f"missing field 'prompt' (expected {SHAPES})")
    answer = _answer(row)
    if answer is None and completion is not None:
        # a demonstration's own final answer, so its prompt can also be scored
        answer = verifier.extract(completion)
    return prompt, answer, completion


def _examples(rows: _Rows, verifier: Verifier, parse: Any = _parse_row) -> list[Example]:
    out: list[Example] = []
    for line, row in rows.rows:
        try:
            prompt, answer, completion = parse(row, verifier)
        except _RowError as e:
            raise DataError(e.message, file=rows.label, line=line, field=e.field) from None
        out.append(
            Example(
                id=f"{rows.id_prefix}:{line}",
                prompt=prompt,
                answer=answer,
                completion=completion,
                source=f"{rows.label}:{line}",
            )
        )
    return out


def _prompt_text(prompt: Prompt) -> str:
    # chat prompts hash by their canonical JSON, so key order in the file does not matter
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


# --- the task --------------------------------------------------------------------


class JsonlTask:
    name = "jsonl"

    def __init__(
        self,
        path: str,
        verifier: str = "auto",  # auto: the format's own checker (plain: last_number)
        eval_path: str | None = None,
        test_fraction: float = 0.1,
        format: str = "plain",
    ) -> None:
        # benchmark row shapes (gsm8k, math, mc) live in formats.py, which builds on this module
        from posttrain.tasks.formats import resolve_verifier, row_parser

        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        self.path = str(path)
        self.eval_path = None if eval_path is None else str(eval_path)
        self.format = format
        self._parse = row_parser(format)
        self.verifier = get_verifier(resolve_verifier(verifier, format))
        self.test_fraction = test_fraction
        self._splits = self._load()

    def _load(self) -> dict[Split, list[Example]]:
        data = _read(self.path)
        train = _examples(data["train"], self.verifier, self._parse)
        if self.eval_path is not None:
            # a held-out DatasetDict contributes its test split when it has one
            held_out = _read(self.eval_path)
            test = _examples(held_out.get("test", held_out["train"]), self.verifier, self._parse)
            return {"train": train, "test": test}
        if "test" in data:
            return {"train": train, "test": _examples(data["test"], self.verifier, self._parse)}
        is_test = [in_test_split(_prompt_text(ex.prompt), self.test_fraction) for ex in train]
        return {
            "train": [ex for ex, t in zip(train, is_test) if not t],
            "test": [ex for ex, t in zip(train, is_test) if t],
        }

    def examples(self, split: Split, n: int | None, seed: int) -> list[Example]:
        rows = self._splits[split]
        if not rows:
            # a run that trains or evaluates on nothing would report meaningless numbers
            total = sum(len(r) for r in self._splits.values())
            raise DataError(
                f"the {split} split is empty ({total} row{'s' if total != 1 else ''}, test_fraction={self.test_fraction}): "
                "add rows or give a held-out file (data.eval_path)",
                file=self.path,
            )
        if n is None:
            return list(rows)
        return random.Random(seed).sample(rows, min(n, len(rows)))

    def prompt(self, example: Example) -> Prompt:
        return example.prompt

    def verify(self, example: Example, completion: str) -> float:
        if example.answer is None:
            return 0.0
        return self.verifier.check(example.answer, completion)

    def extract(self, completion: str) -> str | None:
        return self.verifier.extract(completion)
