"""A vLLM rollout engine, colocated with the trainer on one GPU (``engine.backend=vllm``).

vLLM is an optional extra (``pip install 'posttrain[vllm]'``) and needs a CUDA GPU;
this module is imported only when a config asks for it.

How it keeps the rollout contract (``posttrain.rollout.base``):

- The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so a weight
  sync is a call on vLLM's own module: ``load_weights`` takes the trainer's tensors on
  the GPU, under their Hugging Face names, with no copy through the host. The prefix
  cache is dropped after each sync: its keys and values came from the old weights.
- Token ids go in and come out (``skip_tokenizer_init``); text is decoded here with the
  trainer's tokenizer, so both engines decode alike.
- Logprobs are vLLM's ``processed_logprobs``: log softmax of logits / temperature, the
  distribution the trainer recomputes for the importance ratio. vLLM computes them
  after top-k/top-p truncation, which the trainer does not, so the engine declares
  ``truncation=False`` and ``check_engine`` refuses truncated sampling with it at load time.
- With a seed, row i of a call gets seed + i: a call is reproducible on its own (a
  resumed run draws what the uninterrupted one drew) and repeated prompts still get
  different samples. The engine runs in bf16 (or the model's dtype), the trainer in
  fp32 under bf16 autocast: the gap between their logprobs is logged by GRPO as
  ``logprob_gap``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from posttrain.errors import ConfigError
from posttrain.rollout.base import VLLM_ENGINE, Completion, EngineCapabilities, SamplingParams, stop_token_ids


def require_vllm() -> Any:
    """The ``vllm`` module, or a ConfigError naming the setting that asked for it and the fix."""
    if not torch.cuda.is_available():
        raise ConfigError("the vllm backend needs a CUDA GPU; use engine.backend=torch", field="engine.backend")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core in this process
    try:
        import vllm
    except ImportError as e:
        raise ConfigError(
            f"the vllm backend needs vLLM, which is not installed ({e}): pip install 'posttrain[vllm]'",
            field="engine.backend",
        ) from None
    return vllm


class VLLMEngine:
    """Samples with vLLM from ``model_dir``'s architecture and whatever weights were last synced."""

    capabilities: EngineCapabilities = VLLM_ENGINE  # device_tensors: syncs take the trainer's GPU tensors

    def __init__(
        self,
        model_dir: str | Path,
        tokenizer: PreTrainedTokenizerBase,
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.3,
        enforce_eager: bool = False,
        max_model_len: int | None = None,
        seed: int = 0,
    ) -> None:
        vllm = require_vllm()
        self._vllm = vllm
        self.tokenizer = tokenizer
        self.llm = vllm.LLM(
            model=str(model_dir),
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            max_model_len=max_model_len,
            skip_tokenizer_init=True,
            logprobs_mode="processed_logprobs",
            enable_prefix_caching=True,  # a prompt's G samples share its prefill
            seed=seed,
        )
        try:  # the same stop tokens as the torch engine: the tokenizer's eos and the generation config's
            generation_config = GenerationConfig.from_pretrained(model_dir)
        except OSError:  # no generation_config.json
            generation_config = None
        self.stop_ids = sorted(stop_token_ids(tokenizer.eos_token_id, generation_config))  # type: ignore[arg-type]

    def sync_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy the trainer's weights (any device, any float dtype) into vLLM's model."""
        self.llm.apply_model(lambda model: model.load_weights(iter(state_dict.items())))
        self.llm.reset_prefix_cache()  # cached keys and values belong to the old weights

    def close(self) -> None:
        """Free the engine's GPU memory (weights and KV cache)."""
        core = getattr(self.llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):  # the in-process engine core holds the KV cache
            core.shutdown()
        del self.llm
        torch.cuda.empty_cache()

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        if not prompts:
            return []
        params = [self._params(sampling, i) for i in range(len(prompts))]
        inputs = [{"prompt_token_ids": list(p)} for p in prompts]
        with torch.autocast("cuda", enabled=False):  # vLLM runs its own dtypes; the trainer's autocast stays out
            outs = self.llm.generate(inputs, params, use_tqdm=False)
        return [self._record(p, o.outputs[0]) for p, o in zip(prompts, outs)]

    def _params(self, s: SamplingParams, row: int) -> Any:
        return self._vllm.SamplingParams(
            n=1,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            max_tokens=s.max_new_tokens,
            seed=None if s.seed is None else s.seed + row,
            logprobs=0,  # the sampled token's logprob only
            stop_token_ids=self.stop_ids,
            detokenize=False,
        )

    def _record(self, prompt: list[int], out: Any) -> Completion:
        ids = list(out.token_ids)
        logprobs = [float(step[tok].logprob) for tok, step in zip(ids, out.logprobs)]
        return Completion(
            prompt_ids=list(prompt),
            completion_ids=ids,
            logprobs=logprobs,
            finish_reason="stop" if out.finish_reason == "stop" else "length",
            text=str(self.tokenizer.decode(ids, skip_special_tokens=True)),
        )
