"""Which engine samples: the in-process sampler, Ray workers or vLLM (``engine.backend``).

Ray and vLLM are optional extras: each is imported only when ``engine.backend``
asks for it, and its absence is a one-line error that says how to install it.

``check_engine`` is the one place that refuses a setting the chosen engine cannot
serve; it asks the engine's declared ``EngineCapabilities`` (``posttrain.rollout.base``),
never a backend name. The CLI calls it right after the config loads, the launcher
under torchrun, and ``build_engine`` before it builds anything.

``sync_engine`` is the one place that sends the trainer's weights to an engine.
An in-process engine over the trainer's own module already sees every update, so
syncing it would only copy the weights onto themselves: it is skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from posttrain.config import Config, EngineConfig
from posttrain.errors import ConfigError
from posttrain.rollout.base import ENGINES, InProcessEngine, RolloutEngine
from posttrain.rollout.torch_engine import TorchEngine
from posttrain.train import distributed as dist_setup

FIELD = "engine.backend"


def check_engine(cfg: Config, *, distributed: bool = False, lora: bool | None = None) -> None:
    """Refuse, in one line naming ``engine.backend``, what ``cfg.engine.backend`` cannot do.

    ``distributed``: this process is one of several trainer processes (torchrun).
    ``lora``: the policy carries peft adapters; default: ``cfg.lora`` is set.
    """
    b = cfg.engine.backend
    caps = ENGINES[b]
    if distributed and not caps.torchrun:
        raise ConfigError(f"the {b} engine serves one trainer process: under torchrun use {FIELD}=torch", field=FIELD)
    if (cfg.lora is not None if lora is None else lora) and not caps.lora:
        raise ConfigError(
            f"the {b} engine holds a plain model and cannot take LoRA adapter weights: use {FIELD}=torch with lora",
            field=FIELD,
        )
    s = cfg.sampling
    if (s.top_p < 1 or s.top_k > 0) and not caps.truncation:
        raise ConfigError(
            f"the {b} engine returns logprobs after top-k/top-p truncation, which the trainer does not recompute: "
            f"use sampling.top_p=1 and sampling.top_k=0 with {FIELD}={b}",
            field=FIELD,
        )
    for where, sc in (("sampling.adaptive", cfg.sampling), ("eval.sampling.adaptive", cfg.eval.sampling)):
        if sc.adaptive != "off" and not caps.temperature_head:  # the head reads the sampler's hidden states
            raise ConfigError(
                f"the {b} engine samples a call at one temperature and cannot run a temperature head: "
                f"use {FIELD}=torch or ray with {where}={sc.adaptive}",
                field=FIELD,
            )
    if caps.needs_cuda and not torch.cuda.is_available():
        raise ConfigError(f"the {b} backend needs a CUDA GPU; use {FIELD}=torch", field=FIELD)


def check_head_engine(cfg: Config) -> None:
    """``posttrain adaptive`` samples every response at its temperature head's picks: refuse an engine that cannot."""
    b = cfg.engine.backend
    if not ENGINES[b].temperature_head:
        raise ConfigError(
            f"the {b} engine samples a call at one temperature and cannot run a temperature head, which "
            f"posttrain adaptive trains on its own picks: use {FIELD}=torch or ray",
            field=FIELD,
        )


def require_ray() -> Any:
    """The ``ray`` module, or a ConfigError naming the setting that asked for it and the fix."""
    try:
        import ray
    except ImportError as e:
        raise ConfigError(
            "the ray backend needs Ray, which is not installed: pip install 'posttrain[ray]'", field=FIELD
        ) from e
    return ray


def init_ray(e: EngineConfig) -> None:
    """Join ``engine.address`` or start a local Ray instance, unless this process already did."""
    ray = require_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=e.address, include_dashboard=False, log_to_driver=True)
        except ConnectionError as err:
            raise ConfigError(
                f"cannot join the Ray cluster: {str(err).splitlines()[0]}", field="engine.address"
            ) from None


def build_engine(
    cfg: Config, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model_dir: str | Path
) -> RolloutEngine:
    """The engine ``cfg.engine`` asks for, holding ``model``'s current weights.

    Ray workers and vLLM load ``model_dir`` (the tokenizer and architecture) and then
    receive ``model``'s weights, which after a resume are the checkpoint's, not the
    directory's. The in-process engine samples from ``model`` itself.
    """
    e = cfg.engine
    several = dist_setup.launched_world() > 1 or dist_setup.active()
    check_engine(cfg, distributed=several, lora=True if _is_peft(model) else None)
    if e.backend == "torch":
        return TorchEngine(model, tokenizer, batch_size=e.batch_size, dtype=e.dtype, packed_linears=e.packed_linears)
    if e.backend == "vllm":
        return _vllm_engine(cfg, model, tokenizer, model_dir)
    init_ray(e)
    from posttrain.rollout.ray_engine import RayEngine

    engine = RayEngine(
        str(Path(model_dir).resolve()), e.workers, cfg.model.dtype, e.batch_size, cfg.train.mixed_precision,
        e.sync_timeout_s, e.generate_timeout_s,
    )  # fmt: skip
    return _first_sync(engine, model)


def with_saved_head(engine: RolloutEngine, model_dir: str | Path, adaptive: str) -> RolloutEngine:
    """``engine`` carrying the temperature head saved in ``model_dir`` when ``adaptive`` (a sampling.adaptive) is on.

    Adaptive Decoding (Dhuliawala et al. 2024): ``posttrain adaptive`` writes the head into
    the model directory it saves (``posttrain.models.temperature_head``). The in-process
    engine takes it as it is; Ray workers receive a copy (``RayEngine.sync_head``). No head
    there is a ConfigError; an engine that cannot run one was already refused by ``check_engine``.
    """
    if adaptive == "off" or not engine.capabilities.temperature_head:
        return engine
    from posttrain.models.temperature_head import HEAD_WEIGHTS, load_head

    in_process = engine.capabilities.in_process
    device = next(cast(InProcessEngine, engine).model.parameters()).device if in_process else "cpu"
    head = load_head(model_dir, device)
    if head is None:
        engine.close()
        raise ConfigError(
            f"adaptive sampling needs a temperature head ({HEAD_WEIGHTS}) beside the model in {model_dir}: "
            "train one with posttrain adaptive",
            field="sampling.adaptive",
        )
    if in_process:
        cast(Any, engine).head = head
    else:
        cast(Any, engine).sync_head(head)
    return engine


def _is_peft(model: PreTrainedModel) -> bool:
    """A peft model, whatever the config says (a library caller may wrap one itself)."""
    return hasattr(model, "peft_config")


def _vllm_engine(
    cfg: Config, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model_dir: str | Path
) -> RolloutEngine:
    """vLLM on this process's GPU, beside the trainer, holding ``model``'s current weights."""
    from posttrain.rollout.vllm_engine import VLLMEngine

    e = cfg.engine
    bf16 = cfg.train.mixed_precision == "bf16" or cfg.model.dtype == "bfloat16"
    engine = VLLMEngine(
        str(Path(model_dir).resolve()), tokenizer, "bfloat16" if bf16 else cfg.model.dtype,
        e.gpu_memory_utilization, e.enforce_eager, seed=cfg.seed,
    )  # fmt: skip
    return _first_sync(engine, model)


def _first_sync(engine: RolloutEngine, model: PreTrainedModel) -> RolloutEngine:
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
    """Send ``model``'s weights to ``engine``, unless the engine generates from ``model`` itself.

    An in-process engine over another module (online DPO's generator copy) loads the
    weights into that module.
    """
    if engine.capabilities.in_process and cast(InProcessEngine, engine).model is model:
        return
    engine.sync_weights(_state_for(engine, model))


def _state_for(engine: RolloutEngine, model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The trainer's tensors for an engine that takes them on its device (vLLM), host copies otherwise."""
    return device_state(model) if engine.capabilities.device_tensors else policy_state(model)
