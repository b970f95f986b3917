"""data.tasks: prompts drawn by weight, each sample scored by its own task's reward, per-task metrics."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.config import load_config
from posttrain.data.curriculum import TaskMix
from posttrain.errors import ConfigError
from posttrain.recipes.evaluate import _headline
from posttrain.recipes.online import rollout_metrics
from posttrain.records import Completion, ScoredGroups
from posttrain.rewards.base import Job
from posttrain.rewards.combine import CompositeScorer
from posttrain.rewards.verifier import VerifierComponent
from posttrain.tasks.base import Example, Prompt
from posttrain.tasks.multi import MultiScorer, MultiTask, merge_records, tag
from posttrain.tasks.registry import make_task

TWO = {
    "data": {
        "tasks": [
            {"name": "small", "arithmetic": {"digits": 1, "num_operands": 2}, "weight": 1.0},
            {"name": "big", "arithmetic": {"digits": 3, "num_operands": 2}, "weight": 3.0},
        ]
    }
}


class Length:
    """A dense component: the completion's length (stands for a reward model)."""

    name, isolate = "length", False

    def score(self, examples: list[Example], prompts: list[Prompt], texts: list[str]) -> list[float | None]:
        return [float(len(t)) for t in texts]

    def job(self, example: Example, prompt: Prompt, text: str) -> Job:
        raise NotImplementedError


def test_prompts_are_drawn_by_weight_seeded_and_tagged_with_their_task() -> None:
    task = make_task(load_config(TWO).data)
    assert isinstance(task, MultiTask)
    drawn = task.examples("train", 400, seed=5)
    assert drawn == task.examples("train", 400, seed=5)  # a pure function of the seed: resume needs no state
    names = [task.task_of(ex) for ex in drawn]
    assert names == task.draw_tasks(400, 5)
    assert 0.65 < names.count("big") / 400 < 0.85  # weight 3 of 4
    small = [ex for ex in drawn if task.task_of(ex) == "small"]
    assert all(len(str(ex.prompt).split("+")[0].split("-")[0]) == 1 for ex in small)  # each from its own task
    assert drawn[0].id.startswith(f"{names[0]}/")
    task.weights = {"small": 1.0, "big": 0.0}
    assert {task.task_of(ex) for ex in task.examples("train", 50, 5)} == {"small"}
    test = task.examples("test", 3, 0)
    assert [task.task_of(ex) for ex in test] == ["small"] * 3 + ["big"] * 3


def hand_batch(task: MultiTask) -> tuple[ScoredGroups, MultiScorer]:
    """Prompt 0 from task small (verifier reward), prompt 1 from task big (length reward); G = 2."""
    a = tag("small", Example("1+2", "1+2=?\n", "3"))
    b = tag("big", Example("100+200", "100+200=?\n", "300"))
    texts = ["#3", "#4", "xx", "xxxx"]
    scorer = MultiScorer(
        task,
        {"small": CompositeScorer([(VerifierComponent(task.tasks["small"]), 1.0)]),
         "big": CompositeScorer([(Length(), 1.0)])},
        {"small": "verifier", "big": None},
    )  # fmt: skip
    examples = [a, a, b, b]
    report = scorer.score(examples, texts, groups=[0, 0, 1, 1], prompt_groups=[0, 0, 1, 1])
    scores = torch.tensor([math.nan if s is None else s for s in report.scores]).view(2, 2)
    completions = [Completion([1], [2], [-0.1], "stop", t) for t in texts]
    return ScoredGroups([a, b], completions, scores, report, 0, 0.1), scorer


def test_each_sample_is_scored_by_its_own_tasks_reward_and_metrics_are_per_task() -> None:
    """small: verifier on "#3", "#4" (gold 3) -> 1, 0. big: length of "xx", "xxxx" -> 2, 4.

    Per task: small reward 0.5, accuracy 0.5; big reward 3.0, no verifier so no accuracy.
    Advantages (grpo: group mean and unbiased std): small (1, 0) -> +-0.7071, big (2, 4) -> +-0.7071;
    |A| sums 1.4142 each.
    """
    task = make_task(load_config(TWO).data)
    assert isinstance(task, MultiTask)
    groups, scorer = hand_batch(task)
    assert groups.scores.flatten().tolist() == [1.0, 0.0, 2.0, 4.0]
    assert groups.report.components == {"small/verifier": [1.0, 0.0, None, None], "big/length": [None, None, 2.0, 4.0]}
    rollout = rollout_metrics(groups, "grpo", 0)
    assert rollout["reward/small/verifier"] == 0.5 and rollout["reward/big/length"] == 3.0
    cfg = load_config(TWO)
    mix = TaskMix(cfg, task, {})
    metrics = mix.observe(groups, scorer, lambda xs: [float(x) for x in xs])
    assert metrics["task/small/reward"] == 0.5 and metrics["task/small/accuracy"] == 0.5
    assert metrics["task/big/reward"] == 3.0 and "task/big/accuracy" not in metrics
    assert (metrics["task/small/prompts"], metrics["task/big/prompts"]) == (1, 1)
    assert (metrics["task/small/weight"], metrics["task/big/weight"]) == (0.25, 0.75)
    assert mix.curriculum.windows == [
        [[pytest.approx(2**0.5, abs=1e-4), 2.0]],
        [[pytest.approx(2**0.5, abs=1e-4), 2.0]],
    ]


def test_the_evaluation_record_pools_the_tasks_by_problem_count() -> None:
    """small: 10 problems, pass@1 0.5; big: 30 problems, pass@1 0.1 -> (5 + 3) / 40 = 0.2."""

    def rec(n: int, p1: float, g: float) -> dict[str, object]:
        return {"pass_at_k": {"1": p1, "2": p1 + 0.1}, "maj_at_k": {"1": p1}, "greedy_accuracy": g,
                "num_scored_problems": n, "num_unscored_problems": 0, "samples_per_problem": 2,
                "check_timeouts": 0, "check_errors": 0, "temperature": 1.0}  # fmt: skip

    merged = merge_records({"small": rec(10, 0.5, 1.0), "big": rec(30, 0.1, 0.0)})
    assert merged["pass_at_k"] == pytest.approx({"1": 0.2, "2": 0.3})
    assert merged["greedy_accuracy"] == pytest.approx(0.25)
    assert merged["num_scored_problems"] == 40 and set(merged["tasks"]) == {"small", "big"}
    assert "pass@1 0.200" in _headline("m", merged)


def test_bad_task_lists_are_one_line() -> None:
    with pytest.raises(ConfigError, match="data.tasks.1.name: two tasks are named 'a'"):
        load_config({"data": {"tasks": [{"name": "a"}, {"name": "a"}]}})
    with pytest.raises(ConfigError, match="data.tasks.0.path: a jsonl task needs a path"):
        load_config({"data": {"tasks": [{"name": "a", "task": "jsonl"}]}})
    with pytest.raises(ConfigError, match="data.tasks.0.name: use letters"):
        load_config({"data": {"tasks": [{"name": "a/b"}]}})
    with pytest.raises(ConfigError, match="missing key 'name'"):
        load_config({"data": {"tasks": [{"weight": 2.0}]}})
    with pytest.raises(ConfigError, match=r"data.tasks.0.reward.components: reward.combine=hero needs exactly two"):
        load_config({"data": {"tasks": [{"name": "a", "reward": {"combine": "hero"}}]}})


def test_a_hero_tasks_prompt_weights_reach_the_merged_report_and_the_others_weigh_1() -> None:
    """Task big under reward.combine=hero (verifier + length), task small a plain verifier; G = 2.

    big's one group: verifier on "#300", "xxxx" (gold 300) -> 1, 0; stratified 0.95 and -0.05. With one group
    its dense std equals the mean std: weight w_min + (w_max - w_min) / 2 = 0.4 + 1.3 = 1.7. small: weight 1.
    """
    from posttrain.config.reward import RewardComponentConfig, RewardConfig
    from posttrain.rewards.hero import combiner

    task = make_task(load_config(TWO).data)
    assert isinstance(task, MultiTask)
    hero = RewardConfig([RewardComponentConfig("verifier"), RewardComponentConfig("python", function="m:f", name="length")],
                        combine="hero")  # fmt: skip
    scorer = MultiScorer(
        task,
        {"small": CompositeScorer([(VerifierComponent(task.tasks["small"]), 1.0)]),
         "big": CompositeScorer([(VerifierComponent(task.tasks["big"]), 1.0), (Length(), 1.0)],
                                combine=combiner(hero, ["verifier", "length"]))},
        {"small": "verifier", "big": "verifier"},
    )  # fmt: skip
    a = tag("small", Example("1+2", "1+2=?\n", "3"))
    b = tag("big", Example("100+200", "100+200=?\n", "300"))
    report = scorer.score([a, a, b, b], ["#3", "#4", "#300", "xxxx"], groups=[0, 0, 1, 1], prompt_groups=[0, 0, 1, 1])
    assert report.scores == pytest.approx([1.0, 0.0, 0.95, -0.05])
    assert report.weights == pytest.approx([1.0, 1.0, 1.7, 1.7])
    plain = MultiScorer(task, {"small": scorer.scorers["small"], "big": scorer.scorers["small"]}, {})
    assert plain.score([a, a], ["#3", "#4"], prompt_groups=[0, 0]).weights is None  # no hero task: no weights
