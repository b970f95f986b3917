"""The rollout contract: prompts in, completions with per-token logprobs out.

Engines (the batched PyTorch sampler here, vLLM later) implement
``RolloutEngine``; everything downstream reads ``Completion`` records only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    max_new_tokens: int = 64
    seed: int | None = None  # fixes the draw for a whole generate() call


@dataclass
class Completion:
    prompt_ids: list[int]
    completion_ids: list[int]  # includes the stop token when finish_reason == "stop"
    logprobs: list[float]  # per completion token, under softmax(logits / temperature)
    finish_reason: Literal["stop", "length"]
    text: str  # decoded completion without special tokens


class RolloutEngine(Protocol):
    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        """One completion per prompt, in order. Repeat a prompt to sample it G times."""
        ...

    def sync_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load the trainer's current weights into the engine."""
        ...


def stop_token_ids(eos_token_id: int | None, generation_config: Any) -> set[int]:
    """The tokenizer's eos, and any the model's generation config adds (chat models often list several)."""
    stop = {int(eos_token_id)} if eos_token_id is not None else set()
    gen_eos = getattr(generation_config, "eos_token_id", None)
    if isinstance(gen_eos, int):
        stop.add(gen_eos)
    elif isinstance(gen_eos, list):
        stop.update(int(i) for i in gen_eos)
    return stop
