"""Scoring completions so that a reward that raises or hangs is counted, never scored 0.

A verifier that raises (a parser bug) or runs forever (sympy on odd input) must
not end a long run, and must not quietly become a reward of 0 either: a 0 for a
correct answer teaches the policy the wrong thing. So every score here is a float
or ``None`` (missing), and a ``ScoreReport`` counts the errors and timeouts and
keeps the first few messages for the log. The recipes then leave the missing
samples out of the update (GRPO drops their groups; online DPO pairs without them).

Two scorers:

- ``LocalScorer`` calls the reward function in this process, on the whole batch as
  before; only when that raises does it score one completion at a time, to find
  and count the ones that fail. It has no time limit.
- ``RewardPool`` (``rollout.backend=ray``) runs ``rollout.reward_workers`` Ray
  actors, each holding the reward function, and scores each completion as its own
  call under ``rollout.reward_timeout_s``. An actor past its deadline is killed and
  replaced (``ray.kill``: a running actor call cannot be cancelled any other way),
  so the pool recovers and the next call starts on a fresh worker whose deadline
  does not include its start-up.

With ``groups``, once one completion of a group fails, the group's completions not
yet started are skipped (missing, counted apart): GRPO drops the whole group
anyway, and this bounds the cost of a prompt whose every answer hangs the checker.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from posttrain.config import RolloutConfig
from posttrain.errors import RolloutError
from posttrain.tasks.base import Example

if TYPE_CHECKING:  # reward workers import this module: it stays free of torch
    from posttrain.rewards.scorers import RewardFn

MAX_MESSAGES = 5
_START_TIMEOUT_S = 120.0


@dataclass
class ScoreReport:
    scores: list[float | None]  # None: missing (the reward raised, timed out, or was skipped)
    errors: int = 0
    timeouts: int = 0
    skipped: int = 0  # not run: another completion of the same group already failed
    messages: list[str] = field(default_factory=list)  # the first MAX_MESSAGES failures, for the log

    def fail(self, i: int, kind: Literal["error", "timeout"], message: str) -> None:
        self.scores[i] = None
        if kind == "error":
            self.errors += 1
        else:
            self.timeouts += 1
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(f"sample {i}: {message}")


class Scorer(Protocol):
    def score(self, examples: list[Example], texts: list[str], groups: Sequence[int] | None = None) -> ScoreReport:
        """One score (or None) per ``(example, text)``; see the module docstring for ``groups``."""
        ...

    def close(self) -> None: ...


def as_score(value: Any) -> float:
    """A reward as a finite float; anything else is the reward function's error, not a score."""
    score = float(value)
    if not math.isfinite(score):
        raise ValueError(f"the reward function returned {score}")
    return score


def describe(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


class LocalScorer:
    """The reward function in this process: batched, and per completion only to isolate a failure."""

    def __init__(self, reward_fn: RewardFn) -> None:
        self.reward_fn = reward_fn

    def score(self, examples: list[Example], texts: list[str], groups: Sequence[int] | None = None) -> ScoreReport:
        try:
            scores = self.reward_fn(examples, texts)
            if len(scores) != len(texts):
                raise ValueError(f"the reward function returned {len(scores)} scores for {len(texts)} completions")
            return ScoreReport([as_score(s) for s in scores])
        except Exception:  # find which completions fail; each is counted below, none is scored 0
            pass
        report = ScoreReport([None] * len(texts))
        failed: set[int] = set()
        for i, (example, text) in enumerate(zip(examples, texts)):
            if groups is not None and groups[i] in failed:
                report.skipped += 1
                continue
            try:
                report.scores[i] = as_score(self.reward_fn([example], [text])[0])
            except Exception as e:  # counted and reported, never scored
                report.fail(i, "error", describe(e))
                if groups is not None:
                    failed.add(groups[i])
        return report

    def close(self) -> None:
        """Nothing to release."""


class _RewardWorker:
    """One Ray actor: holds the reward function and scores one completion per call."""

    def __init__(self, reward_fn: RewardFn) -> None:
        self.reward_fn = reward_fn

    def ready(self) -> bool:
        return True

    def score(self, example: Example, text: str) -> float:
        return as_score(self.reward_fn([example], [text])[0])


class RewardPool:
    """``workers`` Ray actors scoring completions, each call under ``timeout_s``. Needs ``ray.init``.

    A replacement actor starts in the background: the other actors keep scoring, and
    the new one takes work once it answers, so no deadline includes a start-up.
    """

    def __init__(self, reward_fn: RewardFn, workers: int, timeout_s: float) -> None:
        import ray

        self.ray = ray
        if workers < 1:
            raise RolloutError(f"need at least one reward worker, got {workers}", field="rollout.reward_workers")
        self.timeout_s = timeout_s
        try:
            self._fn = ray.put(reward_fn)  # sent once, shared by every actor and every replacement
        except Exception as e:
            raise RolloutError(
                f"the reward function cannot be sent to Ray workers ({describe(e)}); it must be picklable",
                field="rollout.backend",
            ) from e
        self._remote: Any = ray.remote(_RewardWorker)  # Ray's stubs do not follow a class through remote()
        self.actors: list[Any] = [None] * workers
        self._starting: dict[Any, int] = {}  # ready() call -> actor slot, for actors not yet answering
        try:
            for slot in range(workers):
                self._start(slot)
        except BaseException:  # the caller gets no pool to close: its actors would outlive the error
            self.close()
            raise

    def _start(self, slot: int) -> None:
        """Kill the actor in ``slot``, if any (hung or dead), and start a fresh one in its place."""
        if self.actors[slot] is not None:
            self.ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot] = self._remote.remote(self._fn)
        self._starting[self.actors[slot].ready.remote()] = slot

    def _started(self, ref: Any) -> int:
        """The slot whose actor answered ``ref``; an actor that cannot start is an error, not a retry loop."""
        slot = self._starting.pop(ref)
        try:
            self.ray.get(ref)
        except Exception as e:
            raise RolloutError(f"a reward worker failed to start: {describe(e)}", field="rollout.reward_workers") from e
        return slot

    def score(self, examples: list[Example], texts: list[str], groups: Sequence[int] | None = None) -> ScoreReport:
        report = ScoreReport([None] * len(texts))
        failed: set[int] = set()  # groups with a failed sample
        pending = deque(range(len(texts)))
        idle = [slot for slot in range(len(self.actors)) if slot not in self._starting.values()]
        running: dict[Any, tuple[int, int, float]] = {}  # call -> (actor slot, sample, deadline)
        while pending or running:
            while pending and idle:
                i = pending.popleft()
                if groups is not None and groups[i] in failed:
                    report.skipped += 1
                    continue
                slot = idle.pop()
                call = self.actors[slot].score.remote(examples[i], texts[i])
                running[call] = (slot, i, time.monotonic() + self.timeout_s)
            if not pending and not running:
                break
            now = time.monotonic()
            wait_s = min((d for _, _, d in running.values()), default=now + _START_TIMEOUT_S) - now
            done, _ = self.ray.wait([*running, *self._starting], num_returns=1, timeout=max(0.0, wait_s))
            if not done and not running:
                raise RolloutError(
                    f"no reward worker started within {_START_TIMEOUT_S:g} s", field="rollout.reward_workers"
                )
            for ref in done:
                if ref in self._starting:
                    idle.append(self._started(ref))
                    continue
                slot, i, _ = running.pop(ref)
                if not self._collect(ref, slot, i, report) and groups is not None:
                    failed.add(groups[i])
                if slot not in self._starting.values():  # else its actor died and is being replaced
                    idle.append(slot)
            self._expire(running, report, failed, groups)
        return report

    def _expire(
        self,
        running: dict[Any, tuple[int, int, float]],
        report: ScoreReport,
        failed: set[int],
        groups: Sequence[int] | None,
    ) -> None:
        """Calls past their deadline: recorded as timeouts, their actors killed and replaced."""
        now = time.monotonic()
        for ref, (slot, i, deadline) in list(running.items()):
            if deadline <= now:
                del running[ref]
                report.fail(i, "timeout", f"ran past its {self.timeout_s:g} s limit (rollout.reward_timeout_s)")
                if groups is not None:
                    failed.add(groups[i])
                self._start(slot)

    def _collect(self, ref: Any, slot: int, i: int, report: ScoreReport) -> bool:
        """Record call ``ref``'s score for sample ``i``. False when it failed; a dead actor is replaced."""
        ray = self.ray
        try:
            report.scores[i] = float(ray.get(ref))
            return True
        except ray.exceptions.RayActorError as e:  # the actor died (os._exit, out of memory)
            report.fail(i, "error", f"the reward worker died: {describe(e)}")
            self._start(slot)
        except ray.exceptions.RayTaskError as e:  # the reward raised: the actor is fine
            report.fail(i, "error", describe(e.cause if e.cause is not None else e))
        return False

    def close(self) -> None:
        for actor in self.actors:
            if actor is not None:
                self.ray.kill(actor, no_restart=True)
        self.actors, self._starting = [], {}


def build_scorer(r: RolloutConfig | None, reward_fn: RewardFn, pooled: bool = True) -> Scorer:
    """A ``RewardPool`` for ``rollout.backend=ray`` when ``pooled``; else the in-process scorer.

    A reward model is not pooled: it scores a batch in one forward pass, cannot hang
    like a parser can, and a copy per reward actor would multiply its memory.
    """
    if r is None or r.backend != "ray" or not pooled:
        return LocalScorer(reward_fn)
    from posttrain.rollout.factory import init_ray

    init_ray(r)
    return RewardPool(reward_fn, r.reward_workers, r.reward_timeout_s)
