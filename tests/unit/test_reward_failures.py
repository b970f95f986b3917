"""A reward that raises is counted and left out of the update, never scored 0 (no Ray needed)."""

from __future__ import annotations

import math
import random
import sys

import pytest

from posttrain.algorithms.advantages import ADVANTAGES
from posttrain.algorithms.pairs import build_pairs
from posttrain.algorithms.rl_batch import full_batch, kept_groups, rl_batch, rl_rewards
from posttrain.config import GRPOConfig, RewardComponentConfig, RewardConfig
from posttrain.errors import ConfigError
from posttrain.recipes.online import rollout_metrics
from posttrain.recipes.online_dpo import scored_pairs
from posttrain.records import Completion, SamplingParams
from posttrain.rewards.pool import LocalScorer
from posttrain.rewards.registry import build_reward
from posttrain.rollout.factory import require_ray
from posttrain.rollout.groups import sample_groups
from posttrain.tasks.arithmetic import ArithmeticTask
from posttrain.tasks.base import Example


def picky(examples: list[Example], texts: list[str]) -> list[float]:
    """1.0 for "good", 0.0 for anything else, and a crash on "boom", like a parser bug."""
    if "boom" in texts:
        raise ZeroDivisionError("the parser divided by zero")
    return [float(t == "good") for t in texts]


class ScriptedEngine:
    """Returns completions with the scripted texts, in order, one per prompt."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        return [Completion(p, [5, 6], [-0.5, -0.5], "stop", t) for p, t in zip(prompts, self.texts)]

    def sync_weights(self, state_dict: object) -> None:
        pass


def test_local_scorer_finds_and_counts_the_failing_completion() -> None:
    ex = Example(id="e", prompt="1+1=?\n", answer="2")
    report = LocalScorer(picky).score([ex] * 4, ["good", "boom", "bad", "good"])
    assert report.scores == [1.0, None, 0.0, 1.0]
    assert (report.errors, report.timeouts) == (1, 0)
    assert report.messages == ["sample 1: ZeroDivisionError: the parser divided by zero"]
    # with groups, the failed group's later samples are not scored at all
    grouped = LocalScorer(picky).score([ex] * 4, ["boom", "good", "bad", "good"], groups=[0, 0, 1, 1])
    assert grouped.scores == [None, None, 0.0, 1.0]
    assert (grouped.errors, grouped.skipped) == (1, 1)


def test_a_nan_reward_is_an_error_not_a_score() -> None:
    report = LocalScorer(lambda exs, texts: [math.nan] * len(texts)).score([Example("e", "p")], ["x"])
    assert report.scores == [None]
    assert report.errors == 1


def test_grpo_drops_a_group_with_a_missing_reward_instead_of_scoring_it_zero() -> None:
    cfg = GRPOConfig()
    examples = [Example(id=str(i), prompt=f"q{i}") for i in range(3)]
    # group 0 has signal; group 1 would have signal if "boom" were scored 0; group 2 too
    engine = ScriptedEngine(["good", "bad", "boom", "good", "bad", "good"])
    # the recipes' reward: a python component in the deadline pool, one sample per call; one worker
    # takes the calls in order, so the failed group's second sample is never started
    reward = RewardConfig([RewardComponentConfig("python", function="tests.rewards:picky")], workers=1, timeout_s=30.0)
    scorer = build_reward(reward, ArithmeticTask())
    try:
        groups = sample_groups(
            engine, scorer, examples, [[1], [2], [3]], group_size=2, sampling=SamplingParams(),
            policy_version=0, doom_groups=True,
        )  # fmt: skip
    finally:
        scorer.close()
    assert groups.scored.tolist() == [[True, True], [False, False], [True, True]]  # the failed group's rest is skipped
    assert groups.scores[0].tolist() == [1.0, 0.0] and groups.scores[2].tolist() == [0.0, 1.0]
    assert groups.scores[1].isnan().all()  # missing, not 0
    rewards = rl_rewards(groups, cfg.overlong, cfg.overlong_reward)
    keep = kept_groups(rewards, groups.scored, cfg.drop_uniform_groups)
    assert keep.tolist() == [True, False, True]
    advantages = ADVANTAGES[cfg.advantage](rewards)
    batch = rl_batch(
        groups, full_batch(groups, pad_id=0), advantages, keep, overlong=cfg.overlong, loss_agg=cfg.loss_agg, max_len=4
    )
    assert batch is not None
    assert batch.extra["group"].tolist() == [0, 0, 2, 2]
    assert batch.extra["advantages"].isfinite().all()  # the missing rewards reach no kept sample
    assert 1.0 - float(keep.float().mean()) == pytest.approx(1 / 3)  # the step's groups_dropped
    metrics = rollout_metrics(groups, "grpo", 0)
    assert metrics["reward"] == pytest.approx(0.5)  # over the 4 scored samples, not 0.5 * 4 / 6
    assert metrics["reward/picky"] == pytest.approx(0.5)
    assert (metrics["reward_errors"], metrics["reward_timeouts"], metrics["reward_missing"]) == (1, 0, 0)
    assert metrics["unscored"] == 2  # "boom" and its skipped group mate
    assert groups.report.skipped == 1
    assert groups.report.messages == ["sample 2: ZeroDivisionError: the parser divided by zero"]


def test_online_dpo_pairs_never_use_a_sample_without_a_reward() -> None:
    scores: list[float | None] = [1.0, None, 0.0, None, 1.0, None, None, None]
    pairs, skipped = scored_pairs("group", scores, 4, random.Random(0))
    used = {row for c, r, _ in pairs for row in (c, r)}
    assert used <= {i for i, s in enumerate(scores) if s is not None}
    assert sorted((c, r) for c, r, _ in pairs) == [(0, 2)]
    assert skipped["unscored"] == 1  # prompt 1 has one scored sample: no pair possible
    # with every sample scored it is build_pairs itself, draw for draw
    full = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    pairs, _ = scored_pairs("random", list(full), 4, random.Random(3))
    ref = build_pairs("random", [full[:4], full[4:]], random.Random(3))
    assert pairs == [(i * 4 + p.chosen, i * 4 + p.rejected, p.weight) for i, p in ref.pairs]


def test_the_ray_backend_without_ray_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when Ray is not installed
    with pytest.raises(ConfigError, match=r"^engine.backend: .*pip install 'posttrain\[ray\]'"):
        require_ray()
