"""A judge reward whose engine is a Ray actor (the reward's backend is Ray under ``engine.backend=ray``).

Ray is an optional extra (``pip install 'posttrain[ray]'``); CI installs it, and without it this test
skips, saying so. One test: a local Ray start is slow.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'posttrain[ray]'")

from posttrain.config import load_config  # noqa: E402
from posttrain.rewards.registry import build_reward  # noqa: E402
from posttrain.rollout.ray_engine import RayEngine  # noqa: E402
from tests.integration.test_judge_dpo import JUDGE, judge_dir, problems  # noqa: E402, F401  (judge_dir: a fixture)


def test_a_judge_on_one_ray_worker_gives_the_in_process_verdicts(judge_dir: Path) -> None:  # noqa: F811
    task, exs = problems(2)
    examples = [ex for ex in exs for _ in range(2)]
    texts = [f"#{int(exs[0].answer) + 1}", f"#{exs[0].answer}", f"#{exs[1].answer}", f"#{int(exs[1].answer) + 1}"]
    reward = load_config(None, [f"reward.components=[{JUDGE % (judge_dir, 0.0)}]"]).reward
    local = build_reward(reward, task)
    here = local.score(examples, texts, groups=None)
    local.close()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        scorer = build_reward(reward, task, backend="ray")
        engine = scorer.components[0][0].judge.engine
        assert isinstance(engine, RayEngine) and len(engine.actors) == 1
        there = scorer.score(examples, texts, groups=None)
        scorer.close()
    finally:
        ray.shutdown()
    assert there.scores == here.scores == [0.0, 1.0, 1.0, 0.0]  # greedy: the same verdicts as in process
    assert there.counts == here.counts
