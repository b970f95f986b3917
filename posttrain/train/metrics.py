"""metrics.jsonl, its optional TensorBoard and W&B copies, and the progress display.

One JSON record per optimiser step, flushed as written, so a killed run keeps
every step it finished. On resume the file is cut back to the checkpoint's step
first, so steps after the checkpoint are not recorded twice; a torn last line
(a kill in the middle of a write) is dropped there, saying so.

Under torchrun only rank 0 writes: the writer of any other rank drops every
record (the recipes log numbers already summed over ranks), and those ranks'
console is silenced (``posttrain.train.distributed.init``), progress bars included.

``logging`` (``posttrain.config.LoggingConfig``) is set once per run by ``use_logging``
(``posttrain.recipes.common.setup`` calls it): with ``logging.tensorboard`` every record
is also a TensorBoard scalar under ``<stage dir>/tensorboard``, with ``logging.wandb`` it
is logged to that W&B project too. Both libraries are optional extras, imported only
when asked for; a missing one is a one-line error before any model loads.

Progress: on a terminal, rich's live bar with the rate, the elapsed time, the ETA and the
recipe's numbers (loss or reward, and the learning rate); anywhere else (CI logs, Slurm's
output file) a plain line every ``logging.plain_every_s`` seconds and one at the end:
``sft 40/100 (40%), 1.25 it/s, elapsed 0:00:32, ETA 0:00:48, loss 0.8123, lr 1.00e-03``.
The long phases outside a training loop (model loading, DPO's reference precompute,
evaluation sampling and checking) use the same display through ``phase``.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol

import torch.distributed
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from posttrain.config import LoggingConfig
from posttrain.errors import ConfigError, DataError

console = Console(stderr=True)
_settings = LoggingConfig()  # this run's logging section (use_logging)

EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb"}  # logging key -> the module it imports (and the extra)


def use_logging(cfg: LoggingConfig) -> None:
    """Take this run's ``logging`` section; a writer whose library is not installed fails here, in one line."""
    global _settings
    for key, wanted in (("tensorboard", cfg.tensorboard), ("wandb", cfg.wandb)):
        module = EXTRAS[key]
        if wanted and importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"logging.{key} needs the {module} package, which is not installed: pip install 'posttrain[{module}]'",
                field=f"logging.{key}",
            )
    _settings = cfg


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _Extra(Protocol):
    def write(self, record: dict[str, Any], step: int) -> None: ...

    def close(self) -> None: ...


def scalars(record: dict[str, Any], key: str = "step") -> dict[str, float]:
    """A record's finite numbers as ``<stage>/<name>``: the step key and the stage's name are not scalars."""
    stage = record.get("stage", "train")
    out = {}
    for name, value in record.items():
        if name in (key, "stage") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[f"{stage}/{name}"] = float(value)
    return out


class _TensorBoard:
    """Every record's numbers as TensorBoard scalars at the record's step, through torch's own writer."""

    def __init__(self, log_dir: Path, key: str) -> None:
        from torch.utils.tensorboard import SummaryWriter  # the tensorboard extra

        self.key = key
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, record: dict[str, Any], step: int) -> None:
        for tag, value in scalars(record, self.key).items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()  # a killed run keeps what it logged, as metrics.jsonl does

    def close(self) -> None:
        self.writer.close()


class _WandB:
    """Every record's numbers logged to a W&B run; ``WANDB_MODE=offline`` keeps it on disk for ``wandb sync``."""

    def __init__(self, project: str, out: Path, key: str) -> None:
        import wandb  # the wandb extra

        self.key = key
        self.run = wandb.init(project=project, dir=str(out), name=out.name)

    def write(self, record: dict[str, Any], step: int) -> None:
        self.run.log(scalars(record, self.key), step=step, commit=True)  # one record is one whole step

    def close(self) -> None:
        self.run.finish()


def _open_extras(out: Path, key: str) -> list[_Extra]:
    extras: list[_Extra] = []
    if _settings.tensorboard:
        extras.append(_TensorBoard(out / "tensorboard", key))
    if _settings.wandb:
        extras.append(_WandB(_settings.wandb, out, key))
    return extras


class MetricsWriter:
    def __init__(self, path: Path, resume_step: int | None = None, key: str = "step") -> None:
        self.path = path
        self.key = key
        self._file: IO[str] | None = None
        self._extras: list[_Extra] = []
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
        self._extras = _open_extras(path.parent, key)

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._file.flush()
        step = record.get(self.key)
        for extra in self._extras:
            extra.write(record, int(step) if isinstance(step, (int, float)) else 0)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        for extra in self._extras:
            extra.close()
        self._extras = []


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


# ---------------------------------------------------------------------------
# Progress


def _rate(speed: float | None) -> str:
    """Steps per second, or seconds per step when slower than one a second (a real model's SFT step)."""
    if not speed:
        return "-- it/s"
    return f"{speed:.2f} it/s" if speed >= 1 else f"{1 / speed:.1f} s/it"


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


class RateColumn(ProgressColumn):
    """The live bar's rate, as the plain lines write it."""

    def render(self, task: Task) -> Text:
        return Text(_rate(task.speed))


class PlainProgress:
    """``rich.progress.Progress``'s interface (``add_task``, ``update``, a context manager) as plain lines.

    For a stderr that is not a terminal, where a live bar cannot redraw: a line once
    ``every_s`` seconds have passed since the last, and one when the phase ends (also
    when it fails, as the live bar's last frame stays). The rate counts this run's steps
    only, so a resumed run's earlier steps do not inflate it or shorten its ETA.
    """

    def __init__(self, out: Console, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.out, self.every_s, self.clock = out, every_s, clock
        self.tasks: list[dict[str, Any]] = []

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        for i, task in enumerate(self.tasks):
            if task["printed"] != task["completed"]:
                self._print(i)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> TaskID:
        now = self.clock()
        self.tasks.append({"description": description, "total": total, "completed": completed, "start_at": completed,
                           "t0": now, "last": now, "printed": None, "info": fields.get("info", "")})  # fmt: skip
        return TaskID(len(self.tasks) - 1)

    def update(self, task_id: TaskID, advance: float = 0, completed: float | None = None, **fields: Any) -> None:
        task = self.tasks[task_id]
        task["completed"] = completed if completed is not None else task["completed"] + advance
        task["info"] = fields.get("info", task["info"])
        if self.clock() - task["last"] >= self.every_s:
            self._print(task_id)

    def line(self, task_id: int) -> str:
        """The line ``task_id`` prints now."""
        task = self.tasks[task_id]
        elapsed = self.clock() - task["t0"]
        done, total = task["completed"], task["total"]
        speed = (done - task["start_at"]) / elapsed if elapsed > 0 else None
        head = f"{task['description']} {done:g}" + (f"/{total:g} ({100 * done / total:.0f}%)" if total else "")
        parts = [head, _rate(speed), f"elapsed {_clock(elapsed)}"]
        if total and speed:
            parts.append(f"ETA {_clock(max(0.0, total - done) / speed)}")
        if task["info"]:
            parts.append(str(task["info"]))
        return ", ".join(parts)

    def _print(self, task_id: int) -> None:
        self.out.print(self.line(task_id), markup=False, highlight=False, soft_wrap=True)
        task = self.tasks[task_id]
        task["last"], task["printed"] = self.clock(), task["completed"]


def progress() -> Progress | PlainProgress:
    """The display of one long phase: a live bar on a terminal, plain periodic lines elsewhere."""
    if not console.is_terminal:
        return PlainProgress(console, _settings.plain_every_s)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    )


Advance = Callable[..., None]  # ``advance(n=1, info=None)``: n more units of a phase done


@contextlib.contextmanager
def phase(description: str, total: float | None = None, announce: bool = False) -> Iterator[Advance]:
    """A long phase outside a training loop (model loading, DPO's reference, evaluation), shown by ``progress()``.

    With ``total``, ``progress()`` shows it (rate, ETA; a plain line every
    ``logging.plain_every_s`` and one at the end off a terminal) and the yielded
    ``advance(n, info=...)`` moves it; without, ``advance`` does nothing. ``announce``
    adds a line when it starts and one when it ends, with the time it took: for a
    phase that is one opaque call (``from_pretrained``), the only sign it is running.
    """
    t0 = time.monotonic()
    if announce:
        console.print(f"{description}: started", markup=False, highlight=False, soft_wrap=True)
    if total is None:
        yield lambda n=1, info=None: None
    else:
        with progress() as bar:
            task = bar.add_task(description, total=total, info="")

            def advance(n: float = 1, info: str | None = None) -> None:
                if info is None:
                    bar.update(task, advance=n)
                else:
                    bar.update(task, advance=n, info=info)

            yield advance
    if announce:
        took = time.monotonic() - t0
        console.print(f"{description}: done in {took:.1f} s", markup=False, highlight=False, soft_wrap=True)
