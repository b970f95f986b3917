"""metrics.jsonl and the progress display.

One JSON record per optimiser step, flushed as written, so a killed run keeps
every step it finished. On resume the file is cut back to the checkpoint's step
first, so steps after the checkpoint are not recorded twice; a torn last line
(a kill in the middle of a write) is dropped there, saying so.

Under torchrun only rank 0 writes: the writer of any other rank drops every
record (the recipes log numbers already summed over ranks), and those ranks'
console is silenced (``posttrain.train.distributed.init``), progress bars included.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import IO, Any

import torch.distributed
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from posttrain.errors import DataError

console = Console(stderr=True)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter:
    def __init__(self, path: Path, resume_step: int | None = None, key: str = "step") -> None:
        self.path = path
        self._file: IO[str] | None = None
        if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            kept = [r for r in read_metrics(path) if r.get(key, 0) <= resume_step]
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, path)
        self._file = open(path, "a")  # noqa: SIM115 - held open for the whole stage

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every record of ``path``; a torn last line (a kill mid-write) is dropped, saying so.

    Anything else that does not parse is one line naming the file and line.
    """
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    numbered = [(i, line) for i, line in enumerate(lines, 1) if line.strip()]
    records: list[dict[str, Any]] = []
    for n, (i, line) in enumerate(numbered):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(numbered) - 1:
                console.print(
                    f"{path}:{i}: dropped a torn last record (the run was killed while writing it)",
                    soft_wrap=True,
                    highlight=False,
                )
                break
            raise DataError(f"not a JSON record: {e.msg}", file=str(path), line=i) from None
        if not isinstance(record, dict):
            raise DataError("not a JSON object", file=str(path), line=i)
        records.append(record)
    return records


def progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    )
