"""Rows of a user's data file: reading, the checks every row shape shares, and the split rule.

``read_rows`` reads JSONL, Parquet or a saved ``datasets`` directory into numbered
raw rows; a row parser (``posttrain.tasks.formats`` for tasks,
``posttrain.tasks.preferences`` for pairs) turns one row into a record or raises
``RowError``, which ``parse_rows`` turns into a ``DataError`` naming the file, line
and field. ``load_splits`` is the one split rule: ``eval_path`` when given, else the
``test`` split of a ``DatasetDict``, else a stable hash of each prompt
(``in_test_split``): disjoint from train, the same on every run and machine, and the
same for repeated prompts. A file given for evaluation alone (``whole=True``, as
``posttrain eval data.path=test.jsonl``) is not split: every row is a test row.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from posttrain.errors import DataError
from posttrain.tasks.base import Message, Prompt, Split

SUPPORTED = "a .jsonl file, a .parquet file or a datasets directory saved with save_to_disk"

T = TypeVar("T")


@dataclass(frozen=True)
class Rows:
    """Raw rows of one file (or one split of a datasets directory), with their numbers."""

    label: str  # what errors and Example.source name: the path as given
    id_prefix: str  # what Example.id starts with: the file's base name
    rows: list[tuple[int, Any]]  # (1-based line or row number, decoded row)


# --- reading ---------------------------------------------------------------------


def type_name(value: Any) -> str:
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


def _read_datasets_dir(path: str) -> dict[str, Rows]:
    """``{"train": ...}`` for a ``Dataset``; its ``train`` and ``test`` for a ``DatasetDict``."""
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except Exception:
        raise DataError(f"unsupported directory: expected {SUPPORTED}", file=path) from None
    name = Path(path).name
    if isinstance(loaded, datasets.Dataset):
        return {"train": Rows(path, name, _numbered(loaded.to_list()))}
    if "train" not in loaded:
        found = ", ".join(sorted(loaded))
        raise DataError(f"the datasets directory has no 'train' split (found: {found})", file=path)
    # each split is its own directory on disk: errors point at the one holding the row
    return {
        split: Rows(str(Path(path) / split), f"{name}/{split}", _numbered(loaded[split].to_list()))
        for split in ("train", "test")
        if split in loaded
    }


def read_rows(path: str) -> dict[str, Rows]:
    """Raw rows of ``path``: a ``train`` entry always, a ``test`` one when the data has it."""
    p = Path(path)
    if not p.exists():
        raise DataError("file not found", file=path)
    if p.is_dir():
        found = _read_datasets_dir(path)
    elif p.suffix == ".jsonl":
        found = {"train": Rows(path, p.name, list(_read_jsonl(path)))}
    elif p.suffix == ".parquet":
        found = {"train": Rows(path, p.name, _read_parquet(path))}
    else:
        raise DataError(f"unsupported file type {p.suffix or '(none)'!r}: expected {SUPPORTED}", file=path)
    for rows in found.values():
        if not rows.rows:
            raise DataError("no rows", file=rows.label)
    return found


# --- validating ------------------------------------------------------------------


class RowError(Exception):
    """A problem in one row; ``parse_rows`` adds the file and line to make a DataError."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def string_field(row: dict[str, Any], key: str) -> str:
    value = row[key]
    if not isinstance(value, str):
        raise RowError(key, f"expected a string, got {type_name(value)}")
    return value


def answer_field(row: dict[str, Any]) -> str | None:
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
    raise RowError("answer", f"expected a string or a number, got {type_name(value)}")


def message_list(value: Any, name: str) -> list[Message]:
    """``value`` checked as a non-empty list of ``{role, content}`` strings; errors name ``name[i].field``."""
    if not isinstance(value, list):
        raise RowError(name, f"expected a list of {{role, content}} objects, got {type_name(value)}")
    if not value:
        raise RowError(name, "expected at least one message")
    messages: list[Message] = []
    for i, message in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(message, dict):
            raise RowError(where, f"expected a {{role, content}} object, got {type_name(message)}")
        for key in ("role", "content"):
            if key not in message:
                raise RowError(f"{where}.{key}", f"missing field {key!r}")
            if not isinstance(message[key], str):
                raise RowError(f"{where}.{key}", f"expected a string, got {type_name(message[key])}")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def reply_field(row: dict[str, Any], key: str, shape: str) -> tuple[str, bool]:
    """(reply text, whether the row gave it as messages) of a string or a one-message assistant list."""
    if key not in row:
        raise RowError(key, f"missing field {key!r} (expected {shape})")
    value = row[key]
    if isinstance(value, str):
        return value, False
    if not isinstance(value, list):
        raise RowError(key, f"expected a string or a list of messages, got {type_name(value)}")
    messages = message_list(value, key)
    if len(messages) != 1:
        raise RowError(key, f"expected the assistant's reply as one message, got {len(messages)} messages")
    if messages[0]["role"] != "assistant":
        raise RowError(f"{key}[0].role", f"expected role 'assistant', got {messages[0]['role']!r}")
    return messages[0]["content"], True


def parse_rows(rows: Rows, parse: Callable[[Any], T]) -> list[tuple[int, T]]:
    """(line, ``parse(row)``) of every row; the first ``RowError`` becomes a DataError naming its file and line."""
    out: list[tuple[int, T]] = []
    for line, row in rows.rows:
        try:
            out.append((line, parse(row)))
        except RowError as e:
            raise DataError(e.message, file=rows.label, line=line, field=e.field) from None
    return out


# --- splitting -------------------------------------------------------------------


def in_test_split(text: str, test_fraction: float) -> bool:
    """Whether ``text`` (a problem, a prompt) belongs to the test split: a stable hash, no RNG."""
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < test_fraction


def prompt_text(prompt: Prompt) -> str:
    # chat prompts hash by their canonical JSON, so key order in the file does not matter
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def load_splits(
    path: str,
    eval_path: str | None,
    test_fraction: float,
    records: Callable[[Rows], list[T]],
    prompt: Callable[[T], Prompt],
    whole: bool = False,
) -> dict[Split, list[T]]:
    """``records`` of every row of ``path`` split into ``train`` and ``test`` (see the module docstring).

    ``whole``: without ``eval_path``, ``path`` is the evaluation file: its rows (a
    ``DatasetDict``'s ``test`` split when it has one) are all test rows, and there are
    no train rows but that ``DatasetDict``'s ``train`` split.
    """
    data = read_rows(path)
    if whole and eval_path is None:
        if "test" in data:
            return {"train": records(data["train"]), "test": records(data["test"])}
        return {"train": [], "test": records(data["train"])}
    train = records(data["train"])
    if eval_path is not None:
        # a held-out DatasetDict contributes its test split when it has one
        held_out = read_rows(eval_path)
        return {"train": train, "test": records(held_out.get("test", held_out["train"]))}
    if "test" in data:
        return {"train": train, "test": records(data["test"])}
    is_test = [in_test_split(prompt_text(prompt(r)), test_fraction) for r in train]
    return {
        "train": [r for r, t in zip(train, is_test) if not t],
        "test": [r for r, t in zip(train, is_test) if t],
    }
