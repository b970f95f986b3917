"""The old reward interface, kept while the recipes move to ``posttrain.rewards.registry.build_reward``.

A ``RewardFn`` scores a batch of completion texts, each for its example, with one
float per completion; ``REWARDS`` picks one by the old setting's name
(``grpo.reward``, ``rollout.scorer``). The reward model itself lives in
``posttrain.rewards.reward_model``.
"""

from __future__ import annotations

from collections.abc import Callable

from posttrain.rewards.reward_model import (
    RewardModelComponent,
    is_reward_model,
    load_reward_model,
    score_sequences,
)
from posttrain.rewards.verifier import VerifierReward
from posttrain.tasks.base import Example, Task

__all__ = [
    "REWARDS",
    "RewardFn",
    "is_reward_model",
    "load_reward_model",
    "reward_model_reward",
    "score_sequences",
    "verifier_reward",
]

RewardFn = Callable[[list[Example], list[str]], list[float]]


def verifier_reward(task: Task, path: str | None, dtype: str) -> RewardFn:
    return VerifierReward(task)


def reward_model_reward(task: Task, path: str | None, dtype: str, batch_size: int = 64) -> RewardFn:
    component = RewardModelComponent(task, path, dtype, batch_size=batch_size, field="reward_model_path")

    def reward(examples: list[Example], texts: list[str]) -> list[float]:
        scores = component.score(examples, [task.prompt(ex) for ex in examples], texts)
        return [float(s) for s in scores if s is not None]

    return reward


REWARDS: dict[str, Callable[[Task, str | None, str], RewardFn]] = {
    "verifier": verifier_reward,
    "reward_model": reward_model_reward,
}
