"""``build_reward``: the ``reward`` section as one scorer.

Each ``reward.components`` entry becomes a component by its ``kind`` (``KINDS``;
adding one, a judge say, is a builder and a dict entry). The components that may
hang share one deadline pool of ``reward.workers`` worker processes, or Ray actors
with ``backend="ray"``, each call under ``reward.timeout_s``; the pool is started
only when some component needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from posttrain.config.reward import RewardComponentConfig, RewardConfig, component_name
from posttrain.errors import ConfigError
from posttrain.rewards.base import Job, RewardComponent
from posttrain.rewards.combine import CompositeScorer
from posttrain.rewards.isolate import DeadlinePool, process_pool
from posttrain.rewards.python import PythonComponent
from posttrain.rewards.verifier import VerifierComponent
from posttrain.tasks.base import Task

Builder = Callable[[RewardComponentConfig, str, Task, dict[str, Any]], RewardComponent]


def _verifier(c: RewardComponentConfig, key: str, task: Task, ctx: dict[str, Any]) -> RewardComponent:
    return VerifierComponent(task, name=component_name(c))


def _python(c: RewardComponentConfig, key: str, task: Task, ctx: dict[str, Any]) -> RewardComponent:
    if c.function is None:
        raise ConfigError("kind: python needs function: file.py:fn or pkg.module:fn", field=f"{key}.function")
    return PythonComponent(c.function, name=component_name(c), field=f"{key}.function")


def _reward_model(c: RewardComponentConfig, key: str, task: Task, ctx: dict[str, Any]) -> RewardComponent:
    from posttrain.rewards.reward_model import RewardModelComponent  # torch and transformers: only when asked

    return RewardModelComponent(
        task, c.path, ctx["dtype"], device=ctx["device"], batch_size=c.batch_size,
        name=component_name(c), field=f"{key}.path",
    )  # fmt: skip


def _judge(c: RewardComponentConfig, key: str, task: Task, ctx: dict[str, Any]) -> RewardComponent:
    from posttrain.rewards.judge import build_judge  # torch and transformers: only when asked

    return build_judge(c, key, ctx)


def _verdict(c: RewardComponentConfig, key: str, task: Task, ctx: dict[str, Any]) -> RewardComponent:
    from posttrain.rewards.judge import VerdictComponent

    return VerdictComponent(task, name=component_name(c), field=f"{key}.kind")


KINDS: dict[str, Builder] = {
    "verifier": _verifier, "python": _python, "reward_model": _reward_model, "judge": _judge, "verdict": _verdict,
}  # fmt: skip


def build_reward(
    cfg: RewardConfig,
    task: Task,
    *,
    dtype: str = "float32",
    device: str = "auto",
    backend: Literal["local", "ray"] = "local",
    engine: str = "torch",
) -> CompositeScorer:
    """The scorer of ``cfg`` for ``task``. Load errors are ``ConfigError``/``ModelError`` naming the component.

    ``backend="ray"`` runs the pool as Ray actors and needs Ray initialised
    (``posttrain.rollout.factory.init_ray``); ``"local"`` uses worker processes. ``engine`` is
    the policy's ``engine.backend``: a judge samples with the same kind of engine.
    """
    ctx = {"dtype": dtype, "device": device, "backend": backend, "engine": engine}
    built: list[tuple[RewardComponent, float]] = []
    for i, c in enumerate(cfg.components):
        built.append((KINDS[c.kind](c, f"reward.components.{i}", task, ctx), c.weight))
    warmups: list[Job] = [c.warmup() for c, _ in built if isinstance(c, PythonComponent)]
    pool: DeadlinePool | None = None
    if any(c.isolate for c, _ in built):
        make = process_pool
        if backend == "ray":
            from posttrain.rewards.ray_backend import ray_pool as make
        pool = make(
            cfg.workers, cfg.timeout_s, warmups=warmups, what="reward",
            workers_field="reward.workers", timeout_field="reward.timeout_s",
        )  # fmt: skip
    from posttrain.rewards.hero import combiner  # reward.combine: hero, gated (None: the weighted sum)

    return CompositeScorer(built, pool, task, combine=combiner(cfg, [c.name for c, _ in built]))
