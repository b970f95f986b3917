"""LoRA and QLoRA through peft: low-rank adapters trained over a frozen base model.

Why peft rather than our own adapter layers: its directory format
(``adapter_config.json`` + ``adapter_model.safetensors``) is what the ecosystem
loads (``peft.PeftModel.from_pretrained``, vLLM's LoRA serving, TGI), so a LoRA
run's ``final/`` and checkpoints are usable outside posttrain as they are.

- ``load_lora_policy``: the trainable model of a stage with a ``lora`` section:
  fresh adapters (``lora_B = 0``, so the wrapped model starts exactly at the base)
  or, on resume, a checkpoint's adapters. Only ``lora_A``/``lora_B`` train.
- QLoRA (``lora.quantize: 4bit``, Dettmers et al. 2023, arXiv 2305.14314): the
  frozen base is loaded in NF4 with double quantisation and bf16 compute through
  bitsandbytes, which needs a CUDA GPU; ``check_lora`` says so in one line before
  anything is loaded.
- An adapter directory stands for base + adapters: ``load_adapter_model``
  (``posttrain.models.io``, re-exported here) merges them into a plain model
  (``load_model`` calls it), and
  ``merge_adapter`` writes that model as a Hugging Face directory
  (``posttrain merge``). A QLoRA adapter merges into the unquantised base, which
  is close to, not bit-equal with, the NF4 model it was trained on.
- ``BaseView``: the frozen reference of DPO and GRPO's KL term. The base is already
  in memory under the adapters, and at ``lora_B = 0`` it equals the initial
  policy, so the reference is the policy with its adapters switched off: no
  second copy of the weights.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, cast

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from posttrain.config import LoraConfig
from posttrain.device import resolve_device
from posttrain.errors import ConfigError
from posttrain.models.io import (
    DTYPES,
    adapter_base,
    check_causal_lm_dir,
    is_adapter_dir,
    load_adapter_model,
    load_model,
    load_tokenizer,
    save_pretrained_atomic,
)

__all__ = [
    "BaseView",
    "check_lora",
    "is_adapter_dir",
    "is_lora",
    "load_adapter_model",
    "load_lora_policy",
    "merge_adapter",
    "merged_copy",
    "zero_adapters",
]

MERGE_RECORD = "merged_from.json"


def check_lora(cfg: LoraConfig, device: str) -> None:
    """Fail in one line, before any weights load, when QLoRA cannot run here."""
    if cfg.quantize != "4bit":
        return
    hint = "4bit (QLoRA) needs a CUDA GPU and bitsandbytes (pip install bitsandbytes)"
    if resolve_device(device).type != "cuda":
        where = "no CUDA GPU here" if not torch.cuda.is_available() else f"model.device is {device}"
        raise ConfigError(f"{hint}; {where}", field="lora.quantize")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(f"{hint}; bitsandbytes is not installed", field="lora.quantize") from None


def peft_config(cfg: LoraConfig) -> Any:
    """Our ``lora`` section as peft's ``LoraConfig`` (all-linear: every linear layer but the output head)."""
    from peft import LoraConfig as PeftLoraConfig

    names = cfg.target_modules.strip()
    targets: str | list[str] = names if names == "all-linear" else [n.strip() for n in names.split(",") if n.strip()]
    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # annotated int, but only ever divided by r
        lora_dropout=cfg.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
        init_lora_weights=True,  # lora_B = 0: the wrapped model starts exactly at the base (BaseView relies on it)
    )


def load_base(path: str | Path, quantize: str, dtype: str, device: str) -> PreTrainedModel:
    """The frozen base: as ``load_model`` does, or in NF4 for QLoRA."""
    if quantize != "4bit":
        return load_model(path, dtype, device)
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    check_causal_lm_dir(path)
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        str(path), quantization_config=quant, dtype=DTYPES[dtype], device_map={"": resolve_device(device)},
        attn_implementation="sdpa",
    )  # fmt: skip
    model.config.use_cache = False
    # norms and embeddings to fp32 for stable training; checkpointing is switched on by the caller
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def load_lora_policy(
    base: str | Path, cfg: LoraConfig, dtype: str, device: str, adapter: Path | None = None
) -> PreTrainedModel:
    """The base at ``base`` with trainable adapters: fresh, or ``adapter``'s (a checkpoint, on resume)."""
    from peft import PeftModel, get_peft_model

    check_lora(cfg, device)
    model = load_base(base, cfg.quantize, dtype, device)
    with warnings.catch_warnings():  # peft calls a transformers API deprecated in 5.x
        warnings.simplefilter("ignore", FutureWarning)
        try:
            peft_model = (
                get_peft_model(model, peft_config(cfg))
                if adapter is None
                else PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
            )
        except ValueError as e:  # e.g. a target module the model does not have
            raise ConfigError(str(e).splitlines()[0], field="lora.target_modules") from None
    # absolute, so the saved adapters find their base from any working directory
    peft_model.peft_config["default"].base_model_name_or_path = str(Path(base).resolve())
    # a PeftModel forwards every attribute the recipes use (config, device, save_pretrained) to the base
    return cast(PreTrainedModel, peft_model)


def is_lora(model: Any) -> bool:
    """A model wrapped with peft adapters (what ``load_lora_policy`` returns)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def merge_adapter(adapter: str | Path, out: str | Path, dtype: str = "float32") -> Path:
    """Write base + adapters as one Hugging Face model directory, with the tokenizer."""
    if not is_adapter_dir(adapter):
        raise ConfigError("not a peft adapter directory (no adapter_config.json)", file=str(adapter), field="--adapter")
    if Path(out).resolve() == Path(adapter).resolve():
        raise ConfigError("the merged model needs its own directory, not the adapter's", field="--out")
    check_causal_lm_dir(adapter)  # adapter weights, the base and its config, before any weights load
    model = load_adapter_model(adapter, dtype, "cpu")
    tokenizer = load_tokenizer(adapter)
    model.config.use_cache = True  # for plain transformers users: generate with the KV cache
    return save_pretrained_atomic(model, tokenizer, Path(out))


def _adapter_digest(adapter: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    for f in sorted(adapter.glob("adapter_*")):
        h.update(f.name.encode() + f.read_bytes())
    h.update(str(adapter_base(adapter).resolve()).encode())
    return h.hexdigest()


def merged_copy(adapter: str | Path, out: Path, dtype: str) -> Path:
    """``merge_adapter`` into ``out`` once; re-merged only when the adapters or their base path change.

    A training stage started from an adapter directory trains on this full copy, so
    its reference model, reward cache keys, QLoRA loading and resume all see one
    ordinary model directory.
    """
    record = {"adapter": str(Path(adapter).resolve()), "digest": _adapter_digest(Path(adapter)), "dtype": dtype}
    marker = out / MERGE_RECORD
    if marker.is_file() and json.loads(marker.read_text()) == record:
        return out
    merge_adapter(adapter, out, dtype)
    marker.write_text(json.dumps(record, indent=2) + "\n")
    return out


def zero_adapters(model: torch.nn.Module) -> None:
    """Set every ``lora_B`` to 0: the model computes its base again, as at initialisation."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.zero_()


class BaseView:
    """The policy's frozen base, run through the policy with its adapters off, in eval mode.

    Callable like a model and with its ``device``, which is all the reference
    log-prob code uses; ``eval`` and ``requires_grad_`` are no-ops so callers that
    freeze a separate reference copy do not freeze or switch the policy.
    """

    def __init__(self, model: Any) -> None:
        self.model = model

    @property
    def device(self) -> torch.device:
        return self.model.device

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        was_training = self.model.training
        self.model.eval()  # a reference has no dropout, and must not draw from the training RNG
        try:
            with self.model.disable_adapter():
                return self.model(*args, **kwargs)
        finally:
            self.model.train(was_training)

    def eval(self) -> BaseView:
        return self

    def requires_grad_(self, requires_grad: bool = True) -> BaseView:
        return self
