"""Hybrid rewards: a verifier's 0/1 check and a dense score (a reward model, a judge) in one reward.

``reward.combine`` picks how the two components of ``reward.components`` become a
sample's reward; ``weighted_sum`` (the default) never comes here.

**hero**: HERO, "Hybrid Reinforcement: When Reward Is Sparse, It's Better to Be
Dense" (Tao et al. 2025, arXiv 2510.07242), section 3. Inside each prompt's group the
samples are split by the verifier (the two strata) and the dense scores s are min-max
rescaled inside each stratum, so every verified sample ranks above every other one:

    wrong:   r = -alpha + 2 alpha (s - min) / (max - min + eps)     in [-alpha, alpha]
    correct: r = (1 - beta) + 2 beta (s - min) / (max - min + eps)  in [1 - beta, 1 + beta]

with min and max over the stratum's dense scores. Then the variance-aware weight of the
prompt, w = w_min + (w_max - w_min) sigmoid(k (sigma - mean sigma)), sigma the (population)
std of the group's dense scores and mean sigma its mean over the call's groups: prompts
whose samples the dense score tells apart weigh more. The paper's reported settings are
the defaults (alpha = beta = 0.05, w_min 0.4, w_max 3.0, k 6).

Where the weight acts: the paper describes it as a per-prompt training weight, scaling
each prompt's contribution to the update. It is returned beside the rewards
(``ScoreReport.weights``, one per sample, its prompt's) and multiplies the group's
**advantages** after the estimator (``posttrain.algorithms.rl_batch.prompt_weighted``,
called by GRPO), so it has its effect under every ``grpo.advantage``: with ``grpo``, the
per-group std normalisation would divide out a weight folded into the reward, so the
reward stays the stratified r above (it is also what ``reward`` logs) and the weight is
applied to A = (r - mean) / std. Pair-based steps (online DPO) read the rewards only,
where a positive per-prompt weight would not change a pair anyway. Departures, stated:
the paper's text leaves open whether its weight enters before or after GRPO's
normalisation; this is the reading that keeps it from cancelling. Under torchrun the
mean sigma is this rank's groups'. Component weights are not used.

**gated**: the dense score counts only among verified samples:
r = w_v * v + w_d * v * s (w the components' weights, v the 0/1 verifier).

A sample missing either score stays missing (None), never 0. The last function,
``unsigned_answer_check``, is the under-crediting checker of the HERO demonstration
(``posttrain/experiments/hero-arithmetic.yaml``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from posttrain.config.reward import HeroConfig, RewardConfig, combine_roles

Scores = list[float | None]
# per sample: the reward, and its prompt's weight on the advantage (None: the rule has no weights)
Combined = tuple[Scores, list[float] | None]
Combine = Callable[[dict[str, Scores], Sequence[int] | None], Combined]


def stratified(verified: Sequence[float], dense: Sequence[float], alpha: float, beta: float, eps: float) -> list[float]:
    """HERO's stratified normalisation of one group's dense scores (all scored): see the module docstring."""
    out = [0.0] * len(dense)
    for correct in (False, True):
        rows = [i for i, v in enumerate(verified) if (v > 0.5) == correct]
        if not rows:
            continue
        low, high = min(dense[i] for i in rows), max(dense[i] for i in rows)
        base, span = (1.0 - beta, 2.0 * beta) if correct else (-alpha, 2.0 * alpha)
        for i in rows:
            out[i] = base + span * (dense[i] - low) / (high - low + eps)
    return out


def std(values: Sequence[float]) -> float:
    """Population standard deviation (0 for fewer than two values)."""
    if len(values) < 2:
        return 0.0
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))


def variance_weights(sigmas: Sequence[float], w_min: float, w_max: float, k: float) -> list[float]:
    """HERO's prompt weights from each group's dense-score std: w_min + (w_max - w_min) * sigmoid(k (s - mean s))."""
    if not sigmas:
        return []
    mean = math.fsum(sigmas) / len(sigmas)
    return [w_min + (w_max - w_min) / (1.0 + math.exp(-k * (s - mean))) for s in sigmas]


def _by_group(sets: Sequence[int] | None, n: int) -> dict[int, list[int]]:
    if sets is None:
        raise ValueError("reward.combine=hero normalises inside each prompt's group: the scorer needs prompt_groups")
    out: dict[int, list[int]] = {}
    for i, g in enumerate(sets):
        out.setdefault(g, []).append(i)
    return out


def hero_scores(verifier: Scores, dense: Scores, sets: Sequence[int] | None, cfg: HeroConfig) -> Combined:
    """HERO rewards of one scorer call's samples and their prompts' weights; ``sets[i]`` is sample i's prompt group.

    The rewards are the stratified ones (unweighted); the weights, one per sample (its group's
    variance-aware weight; 1.0 for a group with no scored sample), are None when
    ``cfg.weighting`` is off. See the module docstring for where the weight acts.
    """
    out: Scores = [None] * len(dense)
    groups = []  # (all the group's samples, those with both scores), for groups with any scored sample
    for rows in _by_group(sets, len(dense)).values():
        scored = [i for i in rows if verifier[i] is not None and dense[i] is not None]
        if scored:
            groups.append((rows, scored))
    for _, rows in groups:
        normed = stratified([verifier[i] for i in rows], [dense[i] for i in rows], cfg.alpha, cfg.beta, cfg.eps)  # type: ignore[misc]
        for i, r in zip(rows, normed):
            out[i] = r
    if not cfg.weighting:
        return out, None
    weights = [1.0] * len(dense)
    sigmas = [std([dense[i] for i in rows]) for _, rows in groups]  # type: ignore[misc]
    for (everyone, _), w in zip(groups, variance_weights(sigmas, cfg.w_min, cfg.w_max, cfg.k)):
        for i in everyone:  # a missing sample too: the weight is the prompt's
            weights[i] = w
    return out, weights


def gated_scores(verifier: Scores, dense: Scores, w_verifier: float, w_dense: float) -> Scores:
    """w_v * v + w_d * v * s per sample: the dense score only where the verifier says correct."""
    return [None if v is None or s is None else w_verifier * v + w_dense * v * s for v, s in zip(verifier, dense)]


def combiner(cfg: RewardConfig, names: Sequence[str]) -> Combine | None:
    """The group-level combination of ``reward.combine``; None for ``weighted_sum`` (the scorer's own sum)."""
    if cfg.combine == "weighted_sum":
        return None
    v, d = combine_roles(cfg)
    vname, dname = names[v], names[d]
    if cfg.combine == "hero":
        hero = cfg.hero

        def combine_hero(components: dict[str, Scores], sets: Sequence[int] | None) -> Combined:
            return hero_scores(components[vname], components[dname], sets, hero)

        return combine_hero
    wv, wd = cfg.components[v].weight, cfg.components[d].weight

    def combine_gated(components: dict[str, Scores], sets: Sequence[int] | None) -> Combined:
        return gated_scores(components[vname], components[dname], wv, wd), None

    return combine_gated


_UNSIGNED = re.compile(r"#\s*(\d+)")


def unsigned_answer_check(completions: list[str], examples: list[Any], **kwargs: Any) -> list[float]:
    """The HERO demo's under-crediting verifier: its pattern forgets the minus sign.

    It reads the digits after the last ``#`` (``#-63`` reads as 63), so a correct negative
    answer never matches its gold ``-63``: every problem with a negative answer scores 0,
    right or wrong, as a checker blind to one answer form does. A ``kind: python`` reward
    (``posttrain.rewards.hero:unsigned_answer_check``); the task's own check stays exact.
    """
    out = []
    for ex, text in zip(examples, completions):
        found = _UNSIGNED.findall(text)
        out.append(float(bool(found) and ex.answer is not None and found[-1] == ex.answer))
    return out


def demo_pairs(
    n: int, seed: int, num_operands: int = 3, digits: int = 1, direct_fraction: float = 0.5
) -> list[dict[str, str]]:
    """Preference rows for the demo's reward model: a task's demonstration against it with a wrong answer.

    The rejected reply keeps the chosen one's steps and changes the final number by 1 to 3
    either way, so the reward model has to read the answer (negative ones included).
    """
    import random

    from posttrain.config.sections import ArithmeticConfig
    from posttrain.tasks.arithmetic import ArithmeticTask

    task = ArithmeticTask(ArithmeticConfig(num_operands=num_operands, digits=digits, direct_fraction=direct_fraction))
    rng, rows = random.Random(seed), []
    for ex in task.examples("train", n, seed):
        assert ex.completion is not None and ex.answer is not None
        wrong = int(ex.answer) + rng.choice([-3, -2, -1, 1, 2, 3])
        rows.append({"prompt": str(ex.prompt), "chosen": ex.completion,
                     "rejected": ex.completion.rsplit("#", 1)[0] + f"#{wrong}"})  # fmt: skip
    return rows


if __name__ == "__main__":  # python -m posttrain.rewards.hero OUT.jsonl [N]: the demo's preference pairs
    import json
    import sys

    rows = demo_pairs(int(sys.argv[2]) if len(sys.argv) > 2 else 4000, seed=0)
    with open(sys.argv[1], "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"{len(rows)} pairs -> {sys.argv[1]}")
