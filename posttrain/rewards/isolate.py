"""The one deadline pool: run calls that may hang in workers, each under a deadline.

math-verify parses LaTeX with sympy, which can run for unbounded time on odd
input (a gold answer ``9^{9^{9^{9}}}``), and a user's reward function can do
anything. Their own timeouts use ``signal.alarm``, which works only in the main
thread of the main interpreter. So training rewards and evaluation's answer checks
both run such calls here: the parent waits on its workers with a timeout (no
signals, so any thread may call it), and a worker past its deadline is killed and
replaced. Every call ends as one ``Outcome``:

- ``ok``: it returned (``value``);
- ``missing``: it returned, and ``accept`` read the value as "no score" (None);
- ``timeout``: it ran past ``timeout_s`` and its worker was killed;
- ``error``: it raised, or its worker died; ``error`` keeps the message;
- ``skipped``: an earlier call of the same group failed, so the group is unscored
  anyway and its remaining calls are not run; this bounds the cost of a problem
  whose every answer hangs the checker to one deadline per worker.

A deadline starts when the call is handed to a worker that has finished starting,
so it never includes a start-up. ``DeadlinePool`` holds this logic once, over a
``Backend`` that owns the workers: ``ProcessBackend`` (worker processes, the
default) or ``posttrain.rewards.ray_backend.RayBackend`` (Ray actors, for
``rollout.backend=ray``).

Worker processes start with ``forkserver`` where the platform has it: forking a
process that already runs torch's thread pools can deadlock the child, and
``spawn`` would pay sympy's import again for every replacement worker. This module
imports no torch, and neither do the modules the workers preload.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing as mp
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from typing import Any, Literal, Protocol

from posttrain.errors import RolloutError
from posttrain.rewards.base import Job, describe

Status = Literal["ok", "missing", "timeout", "error", "skipped"]

# imported once in the fork server, so each worker starts with sympy already loaded
PRELOAD = [
    "posttrain.rewards.isolate",
    "posttrain.rewards.verifier",
    "posttrain.rewards.python",
    "posttrain.tasks.verifiers",
    "math_verify",
]
START_TIMEOUT_S = 120.0
DIED = "the worker process died"


@dataclass(frozen=True)
class Outcome:
    status: Status
    value: Any = None  # what the call returned, when ok
    error: str | None = None  # what went wrong (or why it is missing)


def execute(held: Sequence[Callable[..., Any]], job: Job) -> Any:
    """Run ``job`` in a worker: ``fn(*args)``, where an int ``fn`` names one of the worker's ``held`` callables."""
    fn, args = job
    target = held[fn] if isinstance(fn, int) else fn
    return target(*args)


def warm_up(jobs: Sequence[Job]) -> None:
    """Jobs a worker runs before it takes work (loading a user's module): failures surface in the real calls."""
    for job in jobs:
        with contextlib.suppress(Exception):
            execute((), job)


class Backend(Protocol):
    """Workers in numbered slots. Only ``DeadlinePool`` calls these, one slot at a time."""

    def start(self, slot: int) -> None:
        """Kill the worker in ``slot`` if any (hung, dead) and begin starting a fresh one; do not wait for it."""
        ...

    def submit(self, slot: int, job: Job) -> bool:
        """Hand ``job`` to the started, idle worker in ``slot``; False if that worker is gone."""
        ...

    def ready(self, slots: Sequence[int], timeout: float) -> list[int]:
        """Those of ``slots`` with news (started, or the call finished), waiting up to ``timeout`` s for one."""
        ...

    def started(self, slot: int) -> str | None:
        """Read ``slot``'s start-up news: None when it is ready for work, else why it failed to start."""
        ...

    def result(self, slot: int) -> tuple[Outcome, bool]:
        """Read ``slot``'s finished call: its outcome, and whether the worker is gone (to be replaced)."""
        ...

    def close(self) -> None: ...


class DeadlinePool:
    """Runs jobs on a backend's workers, each under ``timeout_s``; see the module docstring.

    ``what`` names the workers in errors ("a reward worker failed to start"),
    ``workers_field`` and ``timeout_field`` the settings behind them. Use it as a
    context manager or call ``close``; workers start at construction, in the
    background, so their start-up overlaps whatever the caller does next.
    """

    def __init__(
        self,
        backend: Backend,
        workers: int,
        timeout_s: float,
        *,
        what: str = "check",
        workers_field: str | None = None,
        timeout_field: str | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        if workers < 1:
            raise RolloutError(f"need at least one {what} worker, got {workers}", field=workers_field)
        if not timeout_s > 0:
            raise RolloutError(f"the {what} timeout must be > 0 seconds, got {timeout_s}", field=timeout_field)
        self.backend, self.size, self.timeout_s = backend, workers, timeout_s
        self.what, self.workers_field, self.timeout_field = what, workers_field, timeout_field
        self.start_timeout_s = start_timeout_s
        self._idle: list[int] = []
        self._starting: dict[int, float] = {}  # slot -> when its start-up is overdue
        try:
            for slot in range(workers):
                self._restart(slot)
        except BaseException:  # the caller gets no pool to close: its workers would outlive the error
            self.close()
            raise

    def __enter__(self) -> DeadlinePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.backend.close()
        self._idle, self._starting = [], {}

    def _restart(self, slot: int) -> None:
        self.backend.start(slot)
        self._starting[slot] = time.monotonic() + self.start_timeout_s

    def run(
        self,
        jobs: Sequence[Job],
        groups: Sequence[int] | None = None,
        accept: Callable[[Any], Outcome] | None = None,
    ) -> list[Outcome]:
        """Every job's outcome, in order. ``accept`` turns an ok value into the outcome to record.

        With ``groups``, once a job of a group fails (any outcome but ok), the group's
        jobs not yet started are ``skipped``.
        """
        try:
            return self._run(jobs, groups, accept)
        except BaseException:  # a pool that failed mid-run has calls in flight: end every worker
            self.close()
            raise

    def _run(
        self, jobs: Sequence[Job], groups: Sequence[int] | None, accept: Callable[[Any], Outcome] | None
    ) -> list[Outcome]:
        results: list[Outcome | None] = [None] * len(jobs)
        failed: set[int] = set()  # groups with a failed job
        pending = deque(range(len(jobs)))
        busy: dict[int, tuple[int, float]] = {}  # slot -> (job, deadline)
        if pending and not self._idle and not self._starting:
            raise RuntimeError(f"the {self.what} pool is closed")

        def record(i: int, outcome: Outcome) -> None:
            results[i] = outcome
            if outcome.status != "ok" and groups is not None:
                failed.add(groups[i])

        while True:
            while pending and self._idle:
                i = pending.popleft()
                if groups is not None and groups[i] in failed:
                    results[i] = Outcome("skipped", error="another sample of its group failed")
                    continue
                slot = self._idle.pop()
                if not self.backend.submit(slot, jobs[i]):  # the worker died between jobs: replace it, retry
                    pending.appendleft(i)
                    self._restart(slot)
                    continue
                busy[slot] = (i, time.monotonic() + self.timeout_s)
            if not busy and not pending:
                break
            now = time.monotonic()
            until = min(d for _, d in busy.values()) if busy else min(self._starting.values())
            for slot in self.backend.ready([*busy, *self._starting], max(0.0, until - now)):
                if slot in self._starting:
                    self._started(slot)
                    continue
                i, _ = busy.pop(slot)
                outcome, gone = self.backend.result(slot)
                record(i, _accepted(outcome, accept))
                if gone:
                    self._restart(slot)
                else:
                    self._idle.append(slot)
            now = time.monotonic()
            for slot, (i, deadline) in list(busy.items()):
                if deadline <= now:
                    del busy[slot]
                    where = f" ({self.timeout_field})" if self.timeout_field else ""
                    record(i, Outcome("timeout", error=f"ran past its {self.timeout_s:g} s limit{where}"))
                    self._restart(slot)
            if not busy and not self._idle and pending and min(self._starting.values()) <= now:
                raise RolloutError(
                    f"no {self.what} worker started within {self.start_timeout_s:g} s", field=self.workers_field
                )
        return [r if r is not None else Outcome("error", error="not run") for r in results]

    def _started(self, slot: int) -> None:
        del self._starting[slot]
        problem = self.backend.started(slot)
        if problem is not None:  # a worker that cannot start is an error, not a retry loop
            raise RolloutError(f"a {self.what} worker failed to start: {problem}", field=self.workers_field)
        self._idle.append(slot)


def _accepted(outcome: Outcome, accept: Callable[[Any], Outcome] | None) -> Outcome:
    if outcome.status != "ok" or accept is None:
        return outcome
    try:
        return accept(outcome.value)
    except Exception as e:  # a value the caller cannot read is the call's error
        return Outcome("error", error=describe(e))


# --- worker processes ---------------------------------------------------------------


def _serve(conn: Connection, warmups: Sequence[Job]) -> None:
    """Worker loop: receive a job, send back ``(status, value, error)``; None ends it."""
    # results travel back through the pipe; library warnings here would only be noise
    logging.disable(logging.WARNING)
    for module in PRELOAD:  # already loaded under forkserver; under spawn, before any deadline runs
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    warm_up(warmups)
    conn.send("ready")
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        except Exception as e:  # the job did not unpickle here (a module the worker cannot import)
            conn.send(("error", None, f"the job cannot be loaded in the worker: {describe(e)}"))
            continue
        if job is None:
            return
        try:
            value = execute((), job)
        except Exception as e:  # any failure of a call is reported, never turned into a score
            conn.send(("error", None, describe(e)))
            continue
        try:
            conn.send(("ok", value, None))
        except Exception as e:  # the value does not pickle
            conn.send(("error", None, f"the result cannot be sent back: {describe(e)}"))


def _context() -> BaseContext:
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return mp.get_context("spawn")


class ProcessBackend:
    """Worker processes on pipes. ``warmups``: jobs each worker runs before it reports ready."""

    def __init__(self, workers: int, warmups: Sequence[Job] = ()) -> None:
        self._ctx = _context()
        self._warmups = list(warmups)
        self._procs: dict[int, Any] = {}
        self._conns: dict[int, Connection] = {}

    def start(self, slot: int) -> None:
        self._kill(slot)
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_serve, args=(child, self._warmups), daemon=True)  # type: ignore[attr-defined]
        process.start()
        child.close()
        self._procs[slot], self._conns[slot] = process, parent

    def submit(self, slot: int, job: Job) -> bool:
        try:
            self._conns[slot].send(job)
        except OSError:
            return False
        return True

    def ready(self, slots: Sequence[int], timeout: float) -> list[int]:
        by_conn = {self._conns[s]: s for s in slots}
        return [by_conn[c] for c in wait(list(by_conn), timeout=timeout)]  # type: ignore[index]

    def started(self, slot: int) -> str | None:
        try:
            if self._conns[slot].recv() == "ready":
                return None
        except (EOFError, OSError):
            pass
        return "the worker process exited while starting"

    def result(self, slot: int) -> tuple[Outcome, bool]:
        try:
            status, value, error = self._conns[slot].recv()
        except (EOFError, OSError):
            return Outcome("error", error=DIED), True
        return Outcome(status, value, error), False

    def _kill(self, slot: int) -> None:
        process, conn = self._procs.pop(slot, None), self._conns.pop(slot, None)
        if process is not None:
            process.kill()
            process.join(timeout=5)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for conn in list(self._conns.values()):
            with contextlib.suppress(OSError):  # a worker that already exited needs no goodbye
                conn.send(None)
        for slot, process in list(self._procs.items()):
            process.join(timeout=1)
            self._kill(slot)


def process_pool(
    workers: int,
    timeout_s: float,
    *,
    warmups: Sequence[Job] = (),
    what: str = "check",
    workers_field: str | None = None,
    timeout_field: str | None = None,
) -> DeadlinePool:
    """A ``DeadlinePool`` of worker processes."""
    if workers < 1:  # before any process starts
        raise RolloutError(f"need at least one {what} worker, got {workers}", field=workers_field)
    return DeadlinePool(
        ProcessBackend(workers, warmups), workers, timeout_s,
        what=what, workers_field=workers_field, timeout_field=timeout_field,
    )  # fmt: skip
