"""Loading and saving Hugging Face causal LMs from local directories.

Everything is read from disk: a directory that is missing, lacks a config, or
holds a model that is not a causal LM fails with one line naming it, before any
weights are touched.

A peft adapter directory (``adapter_config.json``, what a LoRA run saves) stands
for its base model plus the adapters: it passes the same checks and loads merged
(``load_adapter_model``), so eval, generate and a next stage use a LoRA run's
``final/`` like any other model directory.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import cast

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from posttrain.device import resolve_device
from posttrain.errors import ModelError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_dir(path: str | Path) -> bool:
    """A peft adapter directory: adapters over the base model its config names."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def is_model_dir(path: str | Path) -> bool:
    """A saved model, full or adapters: what a finished stage leaves in ``final/``."""
    return (Path(path) / "config.json").is_file() or is_adapter_dir(path)


def adapter_base(path: str | Path) -> Path:
    """The base model directory an adapter's ``base_model_name_or_path`` names.

    posttrain writes it absolute; a relative one (moved or hand-written adapters) is
    tried against the working directory, then against the adapter directory itself.
    """
    cfg_file = Path(path) / ADAPTER_CONFIG
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"adapter_config.json is not valid JSON: {e.msg}", file=str(cfg_file), line=e.lineno) from None
    base = raw.get("base_model_name_or_path") if isinstance(raw, dict) else None
    if not base:
        raise ModelError("names no base model", file=str(cfg_file), field="base_model_name_or_path")
    candidates = [Path(base)] if Path(base).is_absolute() else [Path(base), Path(path) / base]
    for c in candidates:
        if c.is_dir() and c.resolve() != Path(path).resolve():
            return c
    raise ModelError(
        f"the base model {base!r} is not a local directory (tried {', '.join(map(str, candidates))}); "
        "point base_model_name_or_path at it",
        file=str(cfg_file),
        field="base_model_name_or_path",
    )


def check_causal_lm_dir(path: str | Path) -> None:
    path = Path(path)
    if not path.is_dir():
        raise ModelError("model directory not found", file=str(path), field="model.path")
    if is_adapter_dir(path):
        if not (any(path.glob("adapter_model.safetensors")) or any(path.glob("adapter_model.bin"))):
            raise ModelError("no adapter weights (adapter_model.safetensors)", file=str(path), field="model.path")
        check_causal_lm_dir(adapter_base(path))
        return
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ModelError("not a Hugging Face model directory (no config.json)", file=str(path), field="model.path")
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"config.json is not valid JSON: {e.msg}", file=str(cfg_file), line=e.lineno) from None
    model_type = raw.get("model_type")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        archs = raw.get("architectures") or []
        raise ModelError(
            f"not a causal language model (model_type={model_type!r}, architectures={archs})",
            file=str(cfg_file),
            field="model_type",
        )
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    if not has_weights:
        raise ModelError("no weights (*.safetensors or *.bin) in the directory", file=str(path), field="model.path")


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    check_causal_lm_dir(path)
    if is_adapter_dir(path) and not (Path(path) / "tokenizer_config.json").is_file():
        path = adapter_base(path)  # adapters saved without a tokenizer use the base model's
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a tokenizer: {e}".splitlines()[0], file=str(path), field="model.path") from None
    if tok.eos_token_id is None:
        raise ModelError("the tokenizer has no eos token; generation could never stop", file=str(path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # padding is always masked, so any id will do
    return tok


def load_model(path: str | Path, dtype: str = "float32", device: str = "auto") -> PreTrainedModel:
    check_causal_lm_dir(path)
    if is_adapter_dir(path):
        return load_adapter_model(path, dtype, device)
    AutoConfig.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype], attn_implementation="sdpa")
    model.to(resolve_device(device))  # type: ignore[arg-type]  # transformers types .to oddly
    model.config.use_cache = False  # training default; the sampler asks for the cache itself
    return model


def load_adapter_model(path: str | Path, dtype: str = "float32", device: str = "auto") -> PreTrainedModel:
    """Base + the adapters of ``path``, merged into one plain model."""
    # imported here: peft takes seconds to import, and plain model directories never need it
    from peft import PeftModel

    base = load_model(adapter_base(path), dtype, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = PeftModel.from_pretrained(base, str(path))
    merged = model.merge_and_unload()
    merged.config.use_cache = False  # as load_model leaves it
    return cast(PreTrainedModel, merged)


def context_length(model: PreTrainedModel) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def save_pretrained_atomic(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path) -> Path:
    """Save model and tokenizer so that ``out`` is either the old or the new one, never half."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    replace_dir(tmp, out)
    return out


def replace_dir(tmp: Path, out: Path) -> None:
    """Swap ``tmp`` into place at ``out``: renames only, so a crash leaves a loadable copy."""
    old = out.with_name(out.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old)
