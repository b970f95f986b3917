"""Sample G completions of each prompt and score them: one ``ScoredGroups`` record.

The one sample-and-score step of every RL recipe. A reward that raises, times out
or returns None leaves its sample's score NaN (``posttrain.records.ScoredGroups``);
with ``doom_groups`` the scorer also skips the rest of a group once one of its
samples failed (GRPO drops such a group; online DPO pairs around the missing one).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from posttrain.records import Completion, SamplingParams, ScoredGroups


def sample_groups(
    engine: Any,
    scorer: Any,
    examples: list[Any],
    prompts: list[list[int]],
    *,
    group_size: int,
    sampling: SamplingParams,
    policy_version: int,
    doom_groups: bool,
) -> ScoredGroups:
    """``engine`` (a RolloutEngine) samples, ``scorer`` (a rewards Scorer) scores; row i*G+j is sample j of prompt i."""
    G = group_size
    t0 = time.perf_counter()
    completions: list[Completion] = engine.generate([p for p in prompts for _ in range(G)], sampling)
    gen_seconds = time.perf_counter() - t0
    for c in completions:
        c.policy_version = policy_version
    rows = range(len(completions))
    report = scorer.score(
        [examples[i // G] for i in rows],
        [c.text for c in completions],
        groups=[i // G for i in rows] if doom_groups else None,
        prompt_groups=[i // G for i in rows],  # for a group-level reward.combine (hero)
    )
    scores = torch.tensor([math.nan if s is None else s for s in report.scores], dtype=torch.float32)
    return ScoredGroups(examples, completions, scores.view(len(examples), G), report, policy_version, gen_seconds)
