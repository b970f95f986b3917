"""The plain records every RL stage reads and writes, at the bottom of the house.

One RL iteration passes these from stage to stage::

    prompts --SamplingParams--> engine --Completion--> reward --ScoredGroups--> step (GRPO, online DPO)

An engine fills in a ``Completion`` per prompt it was given; the shared loop
(``posttrain.recipes.online``) stamps each with the ``policy_version`` that sampled
it and groups them with their scores. A step function reads nothing else. This
module imports nothing heavy (torch only for type checking, and where a tensor is
built), so every layer may import it, reward worker processes included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

MAX_MESSAGES = 5  # failure messages a ScoreReport keeps for the log


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    max_new_tokens: int = 64
    seed: int | None = None  # fixes the draw for a whole generate() call
    # off: one temperature for every token; sample / argmax: each row's (or token's) temperature is the pick of
    # the engine's temperature head, drawn from its distribution or its most likely (posttrain.models.temperature_head)
    adaptive: Literal["off", "sample", "argmax"] = "off"


@dataclass
class Completion:
    prompt_ids: list[int]
    completion_ids: list[int]  # includes the stop token when finish_reason == "stop"
    logprobs: list[float]  # the sampler's, per completion token, under softmax(logits / temperature)
    finish_reason: Literal["stop", "length"]
    text: str  # decoded completion without special tokens
    # per completion token: 1 where the token is the policy's own and trains, 0 where it is context
    # (a tool's output in a multi-turn rollout); None: every token trains
    loss_mask: list[float] | None = None
    # the iteration whose weights sampled this completion: equal to the trainer's iteration when
    # on-policy, older when the sampler is synced every s > 1 iterations (semi-online)
    policy_version: int = 0
    # adaptive decoding: the temperature head's picks (indices into its temperatures), one per completion token
    # (a per-token head) or one for the whole completion (a per-example head); None: sampled without a head
    temperature_choices: list[int] | None = None


@dataclass
class ScoreReport:
    """One scorer call: a reward per sample (None: missing), per-component scores and failure counts.

    The counts are over component calls (one component on one sample): a sample whose
    two components both fail counts twice. ``missing`` counts components that returned
    None; ``skipped`` those not run because another sample of the group had failed.
    """

    scores: list[float | None]  # the weighted sum; None when any component is missing for the sample
    errors: int = 0
    timeouts: int = 0
    skipped: int = 0  # not run: another completion of the same group already failed
    messages: list[str] = field(default_factory=list)  # the first MAX_MESSAGES failures, for the log
    components: dict[str, list[float | None]] = field(default_factory=dict)  # name -> unweighted scores
    missing: int = 0  # a component returned None
    # "<component>/<count>": counts a component keeps of its own (a judge's parse failures, tokens), summed
    # over ranks into the metrics
    counts: dict[str, float] = field(default_factory=dict)
    # per sample: its prompt's weight on the policy-gradient advantage, from a group-level reward.combine
    # (hero's variance-aware weight); None: no weights, every prompt counts once
    weights: list[float] | None = None

    def fail(self, i: int, kind: Literal["error", "timeout"], message: str) -> None:
        self.scores[i] = None
        if kind == "error":
            self.errors += 1
        else:
            self.timeouts += 1
        self.note(i, message)

    def note(self, i: int, message: str) -> None:
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(f"sample {i}: {message}")

    @property
    def unscored(self) -> int:
        """Samples without a reward, for whatever reason."""
        return sum(s is None for s in self.scores)

    def component_totals(self) -> dict[str, tuple[float, int]]:
        """Per component: (sum, count) of its scored samples, to add up over ranks before dividing."""
        return {
            name: (math.fsum(v for v in values if v is not None), sum(v is not None for v in values))
            for name, values in self.components.items()
        }

    def component_means(self) -> dict[str, float]:
        """Per component: the mean over its scored samples (NaN when none was): log as ``reward/<name>``."""
        return {name: total / n if n else math.nan for name, (total, n) in self.component_totals().items()}


@dataclass
class ScoredGroups:
    """One iteration's samples: ``G`` completions of each of ``N`` prompts, scored.

    Row ``i * G + j`` of ``completions`` is sample ``j`` of prompt ``i``. A missing score
    (the reward raised, timed out, or returned None) is NaN in ``scores``: it is never
    read as 0, and a step leaves its sample (GRPO: its group) out of the update.
    """

    examples: list[Any]  # the N prompts' task examples (posttrain.tasks.base.Example)
    completions: list[Completion]  # N * G
    scores: torch.Tensor  # (N, G) float32, NaN where missing
    report: ScoreReport  # the reward's failure counts, first messages, per-component scores
    policy_version: int
    gen_seconds: float
    prompts_too_long: int = 0  # drawn prompts skipped, no room for max_new_tokens (data.truncation); all ranks'

    @property
    def group_size(self) -> int:
        return int(self.scores.shape[1])

    @property
    def scored(self) -> torch.Tensor:
        """(N, G) bool: samples with a score."""
        return ~self.scores.isnan()

    @property
    def prompt_weights(self) -> torch.Tensor | None:
        """(N, G) float32: each sample's prompt weight from the reward (``ScoreReport.weights``); None without."""
        import torch

        weights = self.report.weights if self.report is not None else None
        return None if weights is None else torch.tensor(weights, dtype=torch.float32).view(self.scores.shape)

    @property
    def truncated(self) -> torch.Tensor:
        """(N, G) bool: samples cut off at max_new_tokens."""
        import torch

        flags = [c.finish_reason == "length" for c in self.completions]
        return torch.tensor(flags, dtype=torch.bool).view(self.scores.shape)

    @property
    def gen_tokens(self) -> int:
        return sum(len(c.completion_ids) for c in self.completions)
