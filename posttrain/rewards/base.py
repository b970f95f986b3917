"""What a reward is: components that score samples, and the report a scorer returns.

A reward is a weighted sum of components (``reward.components``): the task's
verifier, a user's python function, a reward model. Each component gives every
completion a float or ``None`` (missing). A component that raises, runs past its
deadline or returns None for a sample leaves that sample unscored: the sample's
reward is ``None``, counted in the ``ScoreReport`` and never read as 0, because a
0 for a correct answer teaches the policy the wrong thing. GRPO leaves the
sample's group out; online DPO pairs around it.

Components that may hang (math_verify, any python function) run in the deadline
pool (``posttrain.rewards.isolate``), one call per sample; the others run in this
process on the whole batch. This module imports no torch: reward workers import it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

# the report a scorer returns lives with the other records, at the bottom of the house
from posttrain.records import MAX_MESSAGES as MAX_MESSAGES
from posttrain.records import ScoreReport as ScoreReport
from posttrain.tasks.base import Example, Prompt

# (function, args): run as function(*args) in a worker. The function must pickle by
# reference (a module-level function); an int names a callable the worker was started with.
Job = tuple[Callable[..., Any] | int, tuple[Any, ...]]


class Scorer(Protocol):
    def score(
        self,
        examples: list[Example],
        texts: list[str],
        groups: Sequence[int] | None = None,
        prompts: Sequence[Prompt] | None = None,
    ) -> ScoreReport:
        """One reward (or None) per ``(example, text)``.

        With ``groups``, once a sample of a group fails, the group's samples not yet
        scored are skipped. ``prompts`` defaults to ``task.prompt(example)``.
        """
        ...

    def close(self) -> None: ...


class RewardComponent(Protocol):
    """One term of the reward. ``isolate`` says where it runs.

    ``isolate``: it may hang, so each sample is a ``job`` for the deadline pool.
    Otherwise ``score`` runs in this process on the whole batch (a reward model:
    batched on the GPU, cannot hang, one copy only).
    """

    name: str
    isolate: bool

    def score(self, examples: list[Example], prompts: list[Prompt], texts: list[str]) -> list[float | None]: ...

    def job(self, example: Example, prompt: Prompt, text: str) -> Job: ...


def describe(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


def as_score(value: Any) -> float:
    """A reward as a finite float; anything else is the reward function's error, not a score."""
    score = float(value)
    if not math.isfinite(score):
        raise ValueError(f"the reward function returned {score}")
    return score


def to_score(value: Any) -> float:
    """A component's value as a finite float: a number (int, float, numpy, a one-element tensor), nothing else."""
    if isinstance(value, (str, bytes)) or not hasattr(type(value), "__float__"):
        raise TypeError(f"returned {value!r:.80} ({type(value).__name__}), not a number")
    score = float(value)
    if not math.isfinite(score):
        raise ValueError(f"returned {score}")
    return score
