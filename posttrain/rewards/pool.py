"""The old scorers over a ``RewardFn``, kept while the recipes move to ``build_reward``.

Both are ``CompositeScorer``s of one component, so they count failures exactly as
the new path does (``posttrain.rewards.combine``):

- ``LocalScorer`` calls the reward function in this process, on the whole batch;
  only when that raises does it score one completion at a time, to find and count
  the ones that fail. It has no time limit.
- ``RewardPool`` (``rollout.backend=ray``) runs the reward function in
  ``rollout.reward_workers`` Ray actors (the deadline pool of
  ``posttrain.rewards.isolate`` over ``posttrain.rewards.ray_backend``), one
  completion per call under ``rollout.reward_timeout_s``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from posttrain.config.reward import RewardConfig
from posttrain.rewards.base import (
    MAX_MESSAGES,
    Job,
    Scorer,
    ScoreReport,
    as_score,
    describe,
)
from posttrain.rewards.combine import CompositeScorer
from posttrain.rewards.isolate import Outcome
from posttrain.tasks.base import Example, Prompt

if TYPE_CHECKING:  # reward workers import this module: it stays free of torch
    from posttrain.rewards.scorers import RewardFn

__all__ = ["MAX_MESSAGES", "LocalScorer", "RewardPool", "ScoreReport", "Scorer", "as_score", "build_scorer", "describe"]


def _legacy_accept(value: Any) -> Outcome:
    return Outcome("ok", as_score(value))


class _FnComponent:
    """A ``RewardFn(examples, texts)`` as a component: in process, or per completion in Ray actors."""

    name = "reward"

    def __init__(self, reward_fn: Callable[[list[Example], list[str]], list[float]], isolate: bool) -> None:
        self.reward_fn, self.isolate = reward_fn, isolate

    def score(self, examples: list[Example], prompts: list[Prompt], texts: list[str]) -> list[Any]:
        return list(self.reward_fn(examples, texts))

    def job(self, example: Example, prompt: Prompt, text: str) -> Job:
        return 0, (example, text)  # the actors hold the reward function: see RewardPool


class _ScoreOne:
    """What each Ray actor holds: the reward function, called on one completion."""

    def __init__(self, reward_fn: RewardFn) -> None:
        self.reward_fn = reward_fn

    def __call__(self, example: Example, text: str) -> float:
        return as_score(self.reward_fn([example], [text])[0])


class LocalScorer(CompositeScorer):
    """The reward function in this process: batched, and per completion only to isolate a failure."""

    def __init__(self, reward_fn: RewardFn) -> None:
        super().__init__([(_FnComponent(reward_fn, isolate=False), 1.0)], accept=_legacy_accept)
        self.reward_fn = reward_fn


class RewardPool(CompositeScorer):
    """``workers`` Ray actors scoring completions, each call under ``timeout_s``. Needs ``ray.init``."""

    def __init__(self, reward_fn: RewardFn, workers: int, timeout_s: float) -> None:
        from posttrain.rewards.ray_backend import ray_pool

        pool = ray_pool(
            workers, timeout_s, held=[_ScoreOne(reward_fn)], what="reward",
            workers_field="rollout.reward_workers", timeout_field="rollout.reward_timeout_s",
            send_field="rollout.backend",
        )  # fmt: skip
        super().__init__([(_FnComponent(reward_fn, isolate=True), 1.0)], pool, accept=_legacy_accept)


def build_scorer(
    r: Any, reward_fn: RewardFn, pooled: bool = True, workers: int | None = None, timeout_s: float | None = None
) -> Scorer:
    """A ``RewardPool`` for ``backend=ray`` (of ``r``, the engine's section) when ``pooled``; else in process.

    ``workers`` and ``timeout_s`` default to ``r.reward_workers`` and ``r.reward_timeout_s``
    where ``r`` has them (the old rollout section), else to ``RewardConfig``'s defaults.
    A reward model is not pooled: it scores a batch in one forward pass, cannot hang
    like a parser can, and a copy per reward actor would multiply its memory.
    """
    if r is None or r.backend != "ray" or not pooled:
        return LocalScorer(reward_fn)
    from posttrain.rollout.factory import init_ray

    init_ray(r)
    defaults = RewardConfig()
    workers = workers if workers is not None else getattr(r, "reward_workers", defaults.workers)
    timeout_s = timeout_s if timeout_s is not None else getattr(r, "reward_timeout_s", defaults.timeout_s)
    return RewardPool(reward_fn, workers, timeout_s)
