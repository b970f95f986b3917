"""reward.combine: hero and gated against numbers worked out by hand; weighted_sum unchanged."""

from __future__ import annotations

import pytest

from posttrain.config import load_config
from posttrain.config.reward import HeroConfig, RewardComponentConfig, RewardConfig, combine_roles
from posttrain.errors import ConfigError
from posttrain.records import Completion, SamplingParams
from posttrain.rewards.base import Job
from posttrain.rewards.combine import CompositeScorer
from posttrain.rewards.hero import (
    combiner,
    gated_scores,
    hero_scores,
    stratified,
    unsigned_answer_check,
    variance_weights,
)
from posttrain.rollout.groups import sample_groups
from posttrain.tasks.base import Example, Prompt


class Fixed:
    """A component that returns preset scores, in order: stands for a verifier or a reward model."""

    isolate = False

    def __init__(self, name: str, values: list[float | None]) -> None:
        self.name, self.values = name, values

    def score(self, examples: list[Example], prompts: list[Prompt], texts: list[str]) -> list[float | None]:
        return [self.values[int(t)] for t in texts]

    def job(self, example: Example, prompt: Prompt, text: str) -> Job:
        raise NotImplementedError


def test_stratified_normalisation_by_hand() -> None:
    """Verifier (1, 1, 0, 0), dense (2, 4, 1, 3), alpha = beta = 0.05, eps -> 0.

    correct: 0.95 + 0.1 (s - 2) / 2 -> 0.95, 1.05; wrong: -0.05 + 0.1 (s - 1) / 2 -> -0.05, 0.05.
    """
    out = stratified([1, 1, 0, 0], [2.0, 4.0, 1.0, 3.0], 0.05, 0.05, 1e-12)
    assert out == pytest.approx([0.95, 1.05, -0.05, 0.05])
    # a wrong sample with the highest dense score still ranks below the worst verified one
    out = stratified([1, 0], [-5.0, 9.0], 0.05, 0.05, 1e-12)
    assert out == pytest.approx([0.95, -0.05]) and out[0] > out[1]


def test_variance_weights_by_hand() -> None:
    """Dense stds 1.1180 (of 2, 4, 1, 3: variance 1.25) and 0; mean 0.5590.

    w = 0.4 + 2.6 sigmoid(6 (sigma - 0.5590)): sigmoid(3.354) = 0.96624 -> 2.91222;
    sigmoid(-3.354) = 0.03376 -> 0.48778.
    """
    assert variance_weights([1.25**0.5, 0.0], 0.4, 3.0, 6.0) == pytest.approx([2.91222, 0.48778], abs=1e-5)
    assert variance_weights([0.3, 0.3], 0.4, 3.0, 6.0) == pytest.approx([1.7, 1.7])  # equal stds: the middle


def test_hero_scores_two_groups_by_hand() -> None:
    """Group 0 as above (weight 2.91222); group 1 = verifier (1, 0), dense (0, 0): 0.95 and -0.05, weight 0.48778.

    The rewards are the stratified ones; the weights come beside them, one per sample (for the advantage).
    """
    verifier: list[float | None] = [1, 1, 0, 0, 1, 0]
    dense: list[float | None] = [2.0, 4.0, 1.0, 3.0, 0.0, 0.0]
    out, weights = hero_scores(verifier, dense, [0, 0, 0, 0, 1, 1], HeroConfig(eps=1e-12))
    wa, wb = 2.912221149, 0.487778851
    assert out == pytest.approx([0.95, 1.05, -0.05, 0.05, 0.95, -0.05])
    assert weights == pytest.approx([wa] * 4 + [wb] * 2)
    unweighted = hero_scores(verifier, dense, [0, 0, 0, 0, 1, 1], HeroConfig(eps=1e-12, weighting=False))
    assert unweighted == (out, None)


def test_hero_leaves_a_missing_score_missing_and_out_of_the_strata() -> None:
    """Sample 1's dense score is missing: it stays None, and the correct stratum is sample 0 alone (0.95)."""
    out, _ = hero_scores([1, 1, 0], [2.0, None, 1.0], [0, 0, 0], HeroConfig(weighting=False))
    assert out[1] is None and out[0] == pytest.approx(0.95) and out[2] == pytest.approx(-0.05)
    with pytest.raises(ValueError, match="prompt_groups"):
        hero_scores([1], [1.0], None, HeroConfig())


def test_gated_by_hand() -> None:
    """w_v = 1, w_d = 0.5: (v, s) = (1, 0.4) -> 1.2; (0, 3.0) -> 0; (1, -1) -> 0.5; missing stays missing."""
    out = gated_scores([1, 0, 1, None], [0.4, 3.0, -1.0, 1.0], 1.0, 0.5)
    assert out == pytest.approx([1.2, 0.0, 0.5, None])


def test_roles_by_kind_and_by_role_key() -> None:
    v = RewardComponentConfig(kind="verifier")
    rm = RewardComponentConfig(kind="reward_model", path="rm")
    py = RewardComponentConfig(kind="python", function="m:f")
    assert combine_roles(RewardConfig([rm, v])) == (1, 0)
    assert combine_roles(RewardConfig([py, rm.__class__("reward_model", path="rm", role="dense")])) == (0, 1)
    assert combine_roles(RewardConfig([RewardComponentConfig("python", function="m:f", role="dense"), py])) == (1, 0)
    with pytest.raises(ValueError, match="cannot tell"):
        combine_roles(RewardConfig([py, rm]))


def test_bad_combine_settings_are_one_line() -> None:
    with pytest.raises(ConfigError, match="reward.combine=hero needs exactly two components"):
        load_config(overrides=["reward.combine=hero"])
    with pytest.raises(ConfigError, match="1 - beta must exceed alpha"):
        load_config(
            {"reward": {"combine": "hero", "hero": {"alpha": 0.6, "beta": 0.5},
                        "components": [{"kind": "verifier"}, {"kind": "python", "function": "m:f"}]}}
        )  # fmt: skip
    with pytest.raises(ConfigError, match="only reward.combine=hero or gated reads a role"):
        load_config({"reward": {"components": [{"kind": "verifier", "role": "verifier"}]}})


def test_composite_scorer_hero_over_prompt_groups() -> None:
    """The scorer's components feed the group-level rule; weighted_sum stays the plain sum."""
    verifier = Fixed("verifier", [1, 1, 0, 0, 1, 0])
    dense = Fixed("rm", [2.0, 4.0, 1.0, 3.0, 0.0, 0.0])
    cfg = RewardConfig(
        [RewardComponentConfig("verifier"), RewardComponentConfig("reward_model", path="x", name="rm")],
        combine="hero", hero=HeroConfig(eps=1e-12, weighting=False),
    )  # fmt: skip
    scorer = CompositeScorer([(verifier, 1.0), (dense, 1.0)], combine=combiner(cfg, ["verifier", "rm"]))
    ex = [Example("e", "p", "1")] * 6
    report = scorer.score(ex, [str(i) for i in range(6)], prompt_groups=[0, 0, 0, 0, 1, 1])
    assert report.scores == pytest.approx([0.95, 1.05, -0.05, 0.05, 0.95, -0.05])
    assert report.components["rm"] == [2.0, 4.0, 1.0, 3.0, 0.0, 0.0]  # the raw scores still reach reward/rm
    plain = CompositeScorer([(verifier, 1.0), (dense, 1.0)]).score(ex, [str(i) for i in range(6)])
    assert plain.scores == pytest.approx([3.0, 5.0, 1.0, 3.0, 1.0, 0.0])


class Scripted:
    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        return [Completion(p, [5], [-0.5], "stop", str(i)) for i, p in enumerate(prompts)]


def test_sample_groups_gives_hero_the_prompt_groups_also_for_online_dpo() -> None:
    """doom_groups=False (online DPO) still hands the rule each sample's prompt: G = 2, three prompts."""
    verifier, dense = Fixed("verifier", [1, 0, 1, 1, 0, 0]), Fixed("rm", [0.0, 5.0, 1.0, 3.0, 2.0, 4.0])
    cfg = RewardConfig(
        [RewardComponentConfig("verifier"), RewardComponentConfig("reward_model", path="x", name="rm")],
        combine="hero", hero=HeroConfig(eps=1e-12, weighting=False),
    )  # fmt: skip
    scorer = CompositeScorer([(verifier, 1.0), (dense, 1.0)], combine=combiner(cfg, ["verifier", "rm"]))
    examples = [Example(str(i), "p", "1") for i in range(3)]
    groups = sample_groups(
        Scripted(), scorer, examples, [[1], [2], [3]], group_size=2, sampling=SamplingParams(),
        policy_version=0, doom_groups=False,
    )  # fmt: skip
    assert groups.scores.flatten().tolist() == pytest.approx([0.95, -0.05, 0.95, 1.05, -0.05, 0.05])


def test_the_demo_checker_misses_negative_answers_only() -> None:
    exs = [Example("a", "p", "-63"), Example("b", "p", "70"), Example("c", "p", "70")]
    assert unsigned_answer_check(["x\n#-63", "x\n#70", "#71"], exs) == [0.0, 1.0, 0.0]


def test_the_gated_combiner_reads_roles_and_weights_from_the_config() -> None:
    """Dense first, verifier second (by role), weights 0.5 and 2.0: (v, s) = (1, 3) -> 2 + 1.5 = 3.5; (0, 3) -> 0."""
    cfg = RewardConfig(
        [RewardComponentConfig("python", function="m:f", weight=0.5, role="dense"),
         RewardComponentConfig("verifier", weight=2.0)],
        combine="gated",
    )  # fmt: skip
    combine = combiner(cfg, ["f", "verifier"])
    assert combine is not None
    assert combine({"f": [3.0, 3.0], "verifier": [1.0, 0.0]}, None) == ([3.5, 0.0], None)  # gated: no weights
    assert combiner(RewardConfig(), ["verifier"]) is None  # weighted_sum: the scorer's own sum


def test_the_hero_weight_scales_each_groups_grpo_advantage_by_hand() -> None:
    """Two prompts, G = 4: group 0 as above (weight 2.91222), group 1 = verifier (1, 0, 0, 0), dense (0, 0, 0, 0).

    Stratified rewards: group 0 (0.95, 1.05, -0.05, 0.05), mean 0.5, unbiased std sqrt(1.01 / 3) = 0.580230;
    group 1 (0.95, -0.05, -0.05, -0.05) (equal dense scores: each stratum at its bottom), mean 0.2, std 0.5,
    dense std 0 -> weight 0.48778. GRPO advantages (eps = 1e-6): group 0 (0.45, 0.55, -0.55, -0.45) / 0.580230
    = (0.775553, 0.947899, -0.947899, -0.775553), times 2.91222 -> (2.258583, 2.760490, -2.760490, -2.258583);
    group 1 (1.5, -0.5, -0.5, -0.5) times 0.48778 -> (0.731666, -0.243889, -0.243889, -0.243889).
    """
    from posttrain.algorithms.advantages import ADVANTAGES
    from posttrain.algorithms.rl_batch import prompt_weighted, rl_rewards

    verifier = Fixed("verifier", [1, 1, 0, 0, 1, 0, 0, 0])
    dense = Fixed("rm", [2.0, 4.0, 1.0, 3.0, 0.0, 0.0, 0.0, 0.0])
    components = [RewardComponentConfig("verifier"), RewardComponentConfig("reward_model", path="x", name="rm")]
    examples = [Example(str(i), "p", "1") for i in range(2)]

    def advantages(cfg: RewardConfig) -> tuple[list[float], list[float], list[float]]:
        scorer = CompositeScorer([(verifier, 1.0), (dense, 1.0)], combine=combiner(cfg, ["verifier", "rm"]))
        groups = sample_groups(
            Scripted(), scorer, examples, [[1], [2]], group_size=4, sampling=SamplingParams(),
            policy_version=0, doom_groups=True,
        )  # fmt: skip
        plain = ADVANTAGES["grpo"](rl_rewards(groups, "keep", 0.0))
        return (
            groups.scores.flatten().tolist(),
            plain.flatten().tolist(),
            prompt_weighted(plain, groups).flatten().tolist(),
        )

    rewards, plain, weighted = advantages(RewardConfig(components, combine="hero", hero=HeroConfig(eps=1e-12)))
    assert rewards == pytest.approx([0.95, 1.05, -0.05, 0.05, 0.95, -0.05, -0.05, -0.05])  # the weight is not in them
    assert plain == pytest.approx([0.775553, 0.947899, -0.947899, -0.775553, 1.5, -0.5, -0.5, -0.5], abs=1e-5)
    assert weighted == pytest.approx(
        [2.258583, 2.760490, -2.760490, -2.258583, 0.731666, -0.243889, -0.243889, -0.243889], abs=1e-5
    )
    # weighting off, gated, or the plain weighted sum: no weights, the advantages are the estimator's own
    for cfg in (
        RewardConfig(components, combine="hero", hero=HeroConfig(eps=1e-12, weighting=False)),
        RewardConfig(components, combine="gated"),
    ):
        _, plain_off, weighted_off = advantages(cfg)
        assert weighted_off == plain_off
    scorer = CompositeScorer([(verifier, 1.0), (dense, 1.0)])
    groups = sample_groups(Scripted(), scorer, examples, [[1], [2]], group_size=4, sampling=SamplingParams(),
                           policy_version=0, doom_groups=True)  # fmt: skip
    plain = ADVANTAGES["grpo"](groups.scores)
    assert groups.report.weights is None and groups.prompt_weights is None and prompt_weighted(plain, groups) is plain
