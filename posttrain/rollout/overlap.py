"""Overlapped rollouts: the next iteration's batch is sampled while the current one trains.

``rollout.max_staleness`` bounds how many optimiser iterations older than the trainer
the weights that sampled a batch may be. 0 is the synchronous loop: every batch is
sampled after the sampler took the trainer's weights, in the loop's own thread.
k >= 1: once iteration i's batch is in hand and the sampler has synced, a producer
thread samples and scores iteration i + 1 from those weights (version i) while the
trainer updates on iteration i; iteration i + 1 uses it if
``current_version - policy_version <= max_staleness``, and resamples it otherwise.
The pipeline is one batch deep, so a used batch is exactly one version old.

This is the one-step off-policy pipeline of asynchronous RLHF (Noukhovitch et al.
2024, "Asynchronous RLHF", arXiv 2410.18252): the update stays a PPO/GRPO
step whose importance ratio pi_theta / pi_old takes pi_old as the behaviour policy,
i.e. the sampler's own logprobs (``Completion.logprobs``), which the clipped
objective (Schulman et al. 2017, eq. 7) already expects to differ from pi_theta.

Exactness: prompts and sampling seeds are pure functions of the iteration index
(``posttrain.recipes.online.draw_and_sample``), never of the producer's order, and
the sampler's weights do not change while the producer samples (it samples from its
own copy; the loop syncs the copy only when the producer is idle). So a run is
reproducible at every k, and k = 0 is today's loop step for step. A checkpoint taken
while a batch is in flight keeps the sampler's weights that batch came from, and a
resumed run samples it again from them first, so resume equals the uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from posttrain.config import Config
from posttrain.errors import ConfigError
from posttrain.records import ScoredGroups
from posttrain.train import distributed


def fresh(current_version: int, policy_version: int, max_staleness: int) -> bool:
    """May a batch sampled by weights ``policy_version`` train the policy at ``current_version``?"""
    return current_version - policy_version <= max_staleness


class Rollouts:
    """At most one iteration's rollout in flight on a producer thread (none at ``max_staleness=0``).

    ``take(it, version)`` returns the producer's batch of iteration ``it`` if it is
    fresh enough at ``version``, else None (the caller samples it now, from freshly
    synced weights); ``submit(it, sample)`` starts ``sample()`` for iteration ``it``.
    The caller syncs the sampler's weights only between ``take`` and ``submit``,
    when nothing is in flight.
    """

    def __init__(self, max_staleness: int):
        self.max_staleness = max_staleness
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="rollout") if max_staleness > 0 else None
        self._pending: tuple[int, Future[ScoredGroups]] | None = None
        self.resampled = 0  # batches thrown away as too stale

    @property
    def overlapped(self) -> bool:
        return self._pool is not None

    def take(self, it: int, version: int) -> ScoredGroups | None:
        """Wait for the batch in flight; it, if it is iteration ``it``'s and fresh at ``version``."""
        if self._pending is None:
            return None
        pending_it, future = self._pending
        self._pending = None
        groups = future.result()  # a producer's exception is raised here, in the loop's thread
        if pending_it == it and fresh(version, groups.policy_version, self.max_staleness):
            return groups
        self.resampled += 1
        return None

    def submit(self, it: int, sample: Callable[[], ScoredGroups]) -> None:
        """Start sampling iteration ``it`` on the producer thread (nothing at ``max_staleness=0``)."""
        if self._pool is None:
            return
        assert self._pending is None, "one batch in flight at a time: take() it first"
        self._pending = (it, self._pool.submit(sample))

    def close(self) -> None:
        """Wait for a batch still in flight (the engine it uses closes after this), then stop the thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._pending = None


def check_overlap(cfg: Config, step: Any) -> int:
    """``rollout.max_staleness``, once the run is one the overlapped loop is exact for (else a ConfigError).

    The config's own checks (``posttrain.config.validate``) cover sync_every, engine.dtype
    and data.tasks; these need the step or the process group.
    """
    k = cfg.rollout.max_staleness
    if k == 0:
        return 0
    if getattr(step, "mix", None) is not None or step.stage not in ("grpo", "dpo"):
        raise ConfigError(
            f"rollout.max_staleness={k}: overlapped rollouts support plain GRPO and online DPO; "
            f"{step.stage} with distillation or demonstrations samples with the trainer's state",
            field="rollout.max_staleness",
        )
    if distributed.active():
        raise ConfigError(
            f"rollout.max_staleness={k}: overlapped rollouts run in one process; under torchrun use 0",
            field="rollout.max_staleness",
        )
    return k
