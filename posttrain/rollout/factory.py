"""Which engine samples: the in-process sampler, Ray workers or vLLM (``rollout.backend``).

Ray and vLLM are optional extras: each is imported only when ``rollout.backend``
asks for it, and its absence is a one-line error that says how to install it.

``sync_engine`` is the one place that sends the trainer's weights to an engine.
An in-process engine over the trainer's own module already sees every update, so
syncing it would only copy the weights onto themselves: it is skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from posttrain.config import Config, RolloutConfig
from posttrain.errors import ConfigError
from posttrain.rollout.base import RolloutEngine
from posttrain.rollout.torch_engine import TorchEngine


class Engine(RolloutEngine, Protocol):
    def close(self) -> None:
        """Release the engine's workers; a no-op for the in-process engine."""
        ...


def require_ray() -> Any:
    """The ``ray`` module, or a ConfigError naming the setting that asked for it and the fix."""
    try:
        import ray
    except ImportError as e:
        raise ConfigError(
            "the ray backend needs Ray, which is not installed: pip install 'posttrain[ray]'", field="rollout.backend"
        ) from e
    return ray


def init_ray(r: RolloutConfig) -> None:
    """Join ``rollout.address`` or start a local Ray instance, unless this process already did."""
    ray = require_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=r.address, include_dashboard=False, log_to_driver=True)
        except ConnectionError as e:
            raise ConfigError(
                f"cannot join the Ray cluster: {str(e).splitlines()[0]}", field="rollout.address"
            ) from None


def build_engine(
    cfg: Config, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model_dir: str | Path
) -> Engine:
    """The engine ``cfg.rollout`` asks for, holding ``model``'s current weights.

    Ray workers load ``model_dir`` (the tokenizer and architecture) and then receive
    ``model``'s weights, which after a resume are the checkpoint's, not the directory's.
    """
    r = cfg.rollout or RolloutConfig()
    if r.backend == "torch":
        return TorchEngine(model, tokenizer, batch_size=cfg.eval.batch_size)
    if hasattr(model, "peft_config"):
        raise ConfigError(
            f"the {r.backend} backend cannot sync LoRA adapters yet; use rollout.backend=torch",
            field="rollout.backend",
        )
    if r.backend == "vllm":
        return _vllm_engine(cfg, r, model, tokenizer, model_dir)
    init_ray(r)
    from posttrain.rollout.ray_engine import RayEngine

    engine = RayEngine(
        str(Path(model_dir).resolve()), r.workers, cfg.model.dtype, cfg.eval.batch_size, cfg.train.mixed_precision,
        r.sync_timeout_s, r.generate_timeout_s,
    )  # fmt: skip
    return _first_sync(engine, model)


def _vllm_engine(
    cfg: Config, r: RolloutConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model_dir: str | Path
) -> Engine:
    """vLLM on this process's GPU, beside the trainer, holding ``model``'s current weights.

    torchrun refused this backend already (``posttrain.recipes.launch``).
    """
    from posttrain.rollout.vllm_engine import VLLMEngine

    bf16 = cfg.train.mixed_precision == "bf16" or cfg.model.dtype == "bfloat16"
    engine = VLLMEngine(
        str(Path(model_dir).resolve()), tokenizer, "bfloat16" if bf16 else cfg.model.dtype,
        r.gpu_memory_utilization, r.enforce_eager, seed=cfg.seed,
    )  # fmt: skip
    return _first_sync(engine, model)


def _first_sync(engine: Engine, model: PreTrainedModel) -> Engine:
    """Give a new engine ``model``'s weights; if that fails, release its workers before the error goes up."""
    try:
        engine.sync_weights(_state_for(engine, model))
    except BaseException:
        engine.close()
        raise
    return engine


def device_state(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """``model``'s weights where they are, detached: for an engine on the same device."""
    return {k: v.detach() for k, v in model.state_dict().items()}


def policy_state(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """Full CPU tensors of ``model``'s weights (a sharded parameter is gathered first)."""
    out = {}
    for k, v in model.state_dict().items():
        full = v.full_tensor() if hasattr(v, "full_tensor") else v  # FSDP2 DTensor: a collective on every rank
        out[k] = full.detach().cpu()
    return out


def sync_engine(engine: RolloutEngine, model: PreTrainedModel) -> None:
    """Send ``model``'s weights to ``engine``, unless the engine generates from ``model`` itself."""
    if getattr(engine, "model", None) is model:
        return
    engine.sync_weights(_state_for(engine, model))


def _state_for(engine: RolloutEngine, model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The trainer's tensors for an engine on its device (vLLM), host copies for one elsewhere (Ray)."""
    return device_state(model) if getattr(engine, "takes_device_tensors", False) else policy_state(model)
