"""The rollout contract: prompts in, completions with per-token logprobs out.

Engines (the batched PyTorch sampler, Ray workers, vLLM) implement ``RolloutEngine``;
everything downstream reads ``Completion`` records only.

What an engine can do is its own declaration, ``EngineCapabilities``, one per
backend in ``ENGINES``. The table lives here, away from the engines' modules, so
config checks (``posttrain.rollout.factory.check_engine``) read it without
importing Ray or vLLM; each engine class holds the same object as ``capabilities``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

# the records engines produce, re-exported: they live at the bottom of the house
from posttrain.records import Completion as Completion
from posttrain.records import SamplingParams as SamplingParams


@dataclass(frozen=True)
class EngineCapabilities:
    """What an engine can do, asked instead of checking backend names."""

    # samples from the very module it is given (exposed as ``engine.model``): syncing that
    # module is a no-op, and there is no second copy of the weights
    in_process: bool
    # takes the trainer's tensors where they are at a sync (vLLM, on the trainer's GPU);
    # False: full host copies, a sharded parameter gathered first (Ray, a torch engine over a copy)
    device_tensors: bool
    lora: bool  # can sample from a peft (LoRA) policy
    torchrun: bool  # can serve one of several trainer processes
    # its logprobs are softmax(logits / T) before top-k/top-p truncation, what the trainer
    # recomputes, so it may sample with truncation (vLLM's come after it)
    truncation: bool
    needs_cuda: bool
    # can sample at a temperature head's picks (``posttrain.models.temperature_head``): the in-process
    # sampler, and Ray workers, which run it and receive the head (``sync_head``); vLLM has no per-token
    # temperature from a head
    temperature_head: bool = False


TORCH_ENGINE = EngineCapabilities(
    in_process=True, device_tensors=False, lora=True, torchrun=True, truncation=True, needs_cuda=False,
    temperature_head=True,
)  # fmt: skip
RAY_ENGINE = EngineCapabilities(
    in_process=False, device_tensors=False, lora=False, torchrun=False, truncation=True, needs_cuda=False,
    temperature_head=True,
)  # fmt: skip
VLLM_ENGINE = EngineCapabilities(
    in_process=False, device_tensors=True, lora=False, torchrun=False, truncation=False, needs_cuda=True
)
# engine.backend -> what that engine can do
ENGINES: dict[str, EngineCapabilities] = {"torch": TORCH_ENGINE, "ray": RAY_ENGINE, "vllm": VLLM_ENGINE}


class RolloutEngine(Protocol):
    @property
    def capabilities(self) -> EngineCapabilities:
        """What this engine can do: one of ``ENGINES``' values (a class attribute on every engine)."""
        ...

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        """One completion per prompt, in order. Repeat a prompt to sample it G times."""
        ...

    def sync_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load the trainer's current weights into the engine."""
        ...

    def close(self) -> None:
        """Release the engine's workers and memory; a no-op for the in-process engine."""
        ...


class InProcessEngine(RolloutEngine, Protocol):
    """An engine whose ``capabilities.in_process`` is set: it samples from ``model`` itself."""

    model: Any  # the torch module it samples from: the trainer's own, or a copy it syncs


def stop_token_ids(eos_token_id: int | None, generation_config: Any) -> set[int]:
    """The tokenizer's eos, and any the model's generation config adds (chat models often list several)."""
    stop = {int(eos_token_id)} if eos_token_id is not None else set()
    gen_eos = getattr(generation_config, "eos_token_id", None)
    if isinstance(gen_eos, int):
        stop.add(gen_eos)
    elif isinstance(gen_eos, list):
        stop.update(int(i) for i in gen_eos)
    return stop
