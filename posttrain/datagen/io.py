"""Reading a command's rows and writing its three outputs, each atomically.

Every ``posttrain data`` command writes into ``output_dir``:

- ``kept.jsonl`` (or ``kept.parquet`` with ``datagen.output_format: parquet``): the kept
  rows, unchanged, in input order: a file ``posttrain sft|grpo|dpo data.path=...`` reads;
- ``removed.jsonl``: one object a removed row, ``{line, reason, ..., row}``, the reason
  being the filter's name and the rest what it matched;
- ``summary.json``: rows in, kept, and removed by each filter.

A file is written to a temporary name beside it and renamed into place, so a killed
command never leaves half a file under the final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.datagen.text import FieldMissing, row_text
from posttrain.errors import DataError
from posttrain.tasks.rows import read_rows

Numbered = list[tuple[int, Any]]  # (1-based line, decoded row)


@dataclass
class Outcome:
    """What a filter decided: kept rows in order, removed ones with their reasons."""

    kept: Numbered = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # summary entries of the command's own

    def remove(self, line: int, row: Any, reason: str, **detail: Any) -> None:
        self.removed.append({"line": line, "reason": reason, **detail, "row": row})

    def summary(self, command: str, source: str) -> dict[str, Any]:
        by = Counter(r["reason"] for r in self.removed)
        return {
            "command": command,
            "input": source,
            "rows": len(self.kept) + len(self.removed),
            "kept": len(self.kept),
            "removed": dict(sorted(by.items())),
            **self.extra,
        }


def read_numbered(path: str | None, setting: str) -> tuple[str, Numbered]:
    """(label, numbered rows) of a JSONL/Parquet file or a datasets directory's train split."""
    if path is None:
        raise DataError(f"give the input file: {setting}=FILE", field=setting)
    rows = read_rows(path)["train"]
    return rows.label, rows.rows


def texts_of(label: str, rows: Numbered, fields: tuple[str, ...] | None, setting: str) -> list[str]:
    """The compared text of every row; a row without the fields is a DataError naming its line."""
    out = []
    for line, row in rows:
        try:
            out.append(row_text(row, fields))
        except FieldMissing as e:
            raise DataError(str(e), file=label, line=line, field=setting) from None
    return out


def _atomic(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: Path, rows: Iterable[Any]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

    _atomic(path, write)


def write_rows(out: Path, name: str, rows: list[Any], fmt: str) -> Path:
    """``rows`` as ``out/name.jsonl`` or ``out/name.parquet``; the path written."""
    if fmt == "jsonl":
        path = out / f"{name}.jsonl"
        write_jsonl(path, rows)
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = out / f"{name}.parquet"
    _atomic(path, lambda tmp: pq.write_table(pa.Table.from_pylist(rows), tmp))
    return path


def write_json(path: Path, data: Any) -> None:
    _atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n"))


def write_outcome(out: Path, outcome: Outcome, command: str, source: str, fmt: str) -> dict[str, Any]:
    """kept, removed.jsonl and summary.json; the summary."""
    write_rows(out, "kept", [row for _, row in outcome.kept], fmt)
    write_jsonl(out / "removed.jsonl", outcome.removed)
    summary = outcome.summary(command, source)
    write_json(out / "summary.json", summary)
    return summary
