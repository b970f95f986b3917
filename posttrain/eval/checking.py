"""Answer checks with a deadline that work from any thread, and never score a failure as 0.

math-verify parses LaTeX with sympy, which can run for unbounded time on odd
input. Its own timeout uses ``signal.alarm``, which works only in the main thread
of the main interpreter: elsewhere (rollout threads, data-loader workers) it
raises, and a caller that catches everything quietly scores the answer 0.

``CheckPool`` runs each check in a small pool of worker processes instead. The
parent waits on the workers' pipes with a timeout (no signals, so any thread may
call it); a worker past its deadline is killed and replaced. Every check ends as
one ``Check``:

- ``ok``: the function returned ``(answer, score)``;
- ``timeout``: it ran past ``timeout_s`` and its worker was killed;
- ``error``: it raised (or its worker died); the message is kept;
- ``skipped``: an earlier check of the same group (one problem) failed, so the
  problem is unscored anyway and its remaining checks are not run; this bounds
  the cost of a gold answer that hangs every check to one deadline per worker.

Workers start with ``forkserver`` where the platform has it: forking a process
that already runs torch's thread pools can deadlock the child, and ``spawn``
would pay sympy's import again for every replacement worker.
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
from typing import Any, Literal

from posttrain.eval.cache import digest
from posttrain.tasks.base import Example, Task
from posttrain.tasks.verifiers import Verifier, judge

Status = Literal["ok", "timeout", "error", "skipped"]

# imported once in the fork server, so each worker starts with sympy already loaded
_PRELOAD = ["posttrain.tasks.verifiers", "math_verify"]
_DIED = "the check's worker process died"
_START_TIMEOUT_S = 120


@dataclass(frozen=True)
class Check:
    status: Status
    answer: str | None = None  # the normalised final answer, for majority voting
    score: float = 0.0  # meaningful only when status == "ok"
    error: str | None = None  # what went wrong, for timeout and error


def _serve(conn: Connection) -> None:
    """Worker loop: receive ``(fn, args)``, send back ``(status, answer, score, error)``."""
    # results travel back through the pipe; library warnings here would only be noise
    logging.disable(logging.WARNING)
    for module in _PRELOAD:  # already loaded under forkserver; under spawn, before any deadline runs
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    conn.send("ready")
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        fn, args = job
        try:
            answer, score = fn(*args)
            conn.send(("ok", None if answer is None else str(answer), float(score), None))
        except Exception as e:  # any failure of a check is reported, never turned into a score
            conn.send(("error", None, 0.0, f"{type(e).__name__}: {e}"[:500]))


def _context() -> BaseContext:
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ctx
    return mp.get_context("spawn")


class _Worker:
    def __init__(self, ctx: BaseContext) -> None:
        parent, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child,), daemon=True)  # type: ignore[attr-defined]
        self.process.start()
        child.close()
        self.conn: Connection = parent
        self.job: int | None = None
        self.deadline = 0.0
        # a check's deadline starts when its worker is ready, not while it starts up
        try:
            if self.conn.poll(_START_TIMEOUT_S) and self.conn.recv() == "ready":
                return
        except (EOFError, OSError):
            pass
        self.kill()
        raise RuntimeError(f"a check worker process did not start within {_START_TIMEOUT_S} s")

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError):  # a worker that already exited needs no goodbye
            self.conn.send(None)
        self.process.join(timeout=1)
        if self.process.is_alive():
            self.kill()
        else:
            self.conn.close()


class CheckPool:
    """Worker processes that run checks with a per-check deadline. Use as a context manager."""

    def __init__(self, workers: int = 2, timeout_s: float = 10.0) -> None:
        if workers < 1:
            raise ValueError(f"a check pool needs at least one worker, got {workers}")
        if timeout_s <= 0:
            raise ValueError(f"the check timeout must be > 0 seconds, got {timeout_s}")
        self.size = workers
        self.timeout_s = timeout_s
        self._ctx = _context()
        self._workers: list[_Worker] = []

    def __enter__(self) -> CheckPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for w in self._workers:
            w.stop()
        self._workers = []

    def run(
        self,
        fn: Callable[..., tuple[str | None, float]],
        jobs: Sequence[tuple[Any, ...]],
        groups: Sequence[int] | None = None,
    ) -> list[Check]:
        """``fn(*job)`` for every job, in order. ``fn`` must be a module-level function.

        With ``groups``, once a check of a group fails, the group's checks not yet
        started are ``skipped``.
        """
        results: list[Check | None] = [None] * len(jobs)
        failed: set[int] = set()
        pending = deque(range(len(jobs)))
        while pending or any(w.job is not None for w in self._workers):
            self._assign(fn, jobs, groups, pending, results, failed)
            busy = [w for w in self._workers if w.job is not None]
            if not busy:
                continue
            timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            for conn in wait([w.conn for w in busy], timeout=timeout):
                worker = next(w for w in busy if w.conn is conn)
                check = self._receive(worker)
                self._finish(worker, check, groups, results, failed)
                if check.error == _DIED:
                    self._replace(worker)
            now = time.monotonic()
            for worker in busy:
                if worker.job is not None and worker.deadline <= now:
                    error = f"check ran past its {self.timeout_s:g} s limit"
                    self._finish(worker, Check("timeout", error=error), groups, results, failed)
                    self._replace(worker)
        return [r if r is not None else Check("error", error="not run") for r in results]

    def _assign(
        self,
        fn: Callable[..., tuple[str | None, float]],
        jobs: Sequence[tuple[Any, ...]],
        groups: Sequence[int] | None,
        pending: deque[int],
        results: list[Check | None],
        failed: set[int],
    ) -> None:
        """Give each idle worker (starting workers up to the pool size) its next job."""
        while pending:
            idle = next((w for w in self._workers if w.job is None), None)
            if idle is None and len(self._workers) < self.size:
                idle = _Worker(self._ctx)
                self._workers.append(idle)
            if idle is None:
                return
            i = pending.popleft()
            if groups is not None and groups[i] in failed:
                results[i] = Check("skipped", error="another check of this problem failed")
                continue
            try:
                idle.conn.send((fn, jobs[i]))
            except OSError:  # the worker died between jobs: replace it and retry the job
                pending.appendleft(i)
                self._replace(idle)
                continue
            idle.job, idle.deadline = i, time.monotonic() + self.timeout_s

    def _receive(self, worker: _Worker) -> Check:
        try:
            status, answer, score, error = worker.conn.recv()
        except (EOFError, OSError):
            return Check("error", error=_DIED)
        return Check(status, answer, score, error)

    def _finish(
        self,
        worker: _Worker,
        check: Check,
        groups: Sequence[int] | None,
        results: list[Check | None],
        failed: set[int],
    ) -> None:
        i = worker.job
        if i is None:
            return
        results[i] = check
        if check.status != "ok" and groups is not None:
            failed.add(groups[i])
        worker.job = None

    def _replace(self, worker: _Worker) -> None:
        """Kill ``worker`` and drop it; ``_assign`` starts a fresh one when there is work."""
        worker.job = None
        worker.kill()
        if worker in self._workers:
            self._workers.remove(worker)


# Bump when checking changes in a way that changes cached scores.
CHECKS_VERSION = 1


class TaskChecker:
    """Checks completions against a task's problems, returning one ``Check`` each.

    A task whose verifier may hang (``Verifier.isolate``: math_verify) is checked
    in a ``CheckPool`` with a deadline; the others (regular expressions, the
    built-in task) run inline, where an exception is still an ``error``, not a 0.
    A problem without a gold answer cannot be scored: its checks are errors.
    """

    def __init__(self, task: Task, timeout_s: float = 10.0, workers: int = 2) -> None:
        self.task = task
        verifier = getattr(task, "verifier", None)
        self.verifier: Verifier | None = verifier if isinstance(verifier, Verifier) else None
        self.isolated = self.verifier is not None and self.verifier.isolate
        self.timeout_s, self.workers = timeout_s, workers
        # what the scores depend on besides the samples: the cache keeps scores per checker
        self.key = digest(
            [task.name, getattr(task, "format", None), self.verifier.name if self.verifier else None,
             CHECKS_VERSION, timeout_s if self.isolated else None]
        )[:12]  # fmt: skip

    def run(self, problems: Sequence[Example], jobs: Sequence[tuple[int, str]]) -> list[Check]:
        """Check each ``(problem index, completion text)``; a problem's failure skips its later jobs."""
        if not self.isolated:
            return [self._inline(problems[p], text) for p, text in jobs]
        assert self.verifier is not None
        results: list[Check | None] = [None] * len(jobs)
        todo = []
        for i, (p, _) in enumerate(jobs):
            if problems[p].answer is None:
                results[i] = Check("error", error="the problem has no gold answer")
            else:
                todo.append(i)
        with CheckPool(self.workers, self.timeout_s) as pool:
            args = [(self.verifier.name, problems[jobs[i][0]].answer, jobs[i][1]) for i in todo]
            for i, check in zip(todo, pool.run(judge, args, groups=[jobs[i][0] for i in todo])):
                results[i] = check
        return [r if r is not None else Check("error", error="not run") for r in results]

    def _inline(self, example: Example, text: str) -> Check:
        if example.answer is None:
            return Check("error", error="the problem has no gold answer")
        try:
            if self.verifier is not None:
                answer, score = self.verifier.judged(example.answer, text)
            else:
                answer, score = self.task.extract(text), self.task.verify(example, text)
        except Exception as e:  # reported and counted, never scored as wrong
            return Check("error", error=f"{type(e).__name__}: {e}"[:500])
        return Check("ok", answer, float(score))
