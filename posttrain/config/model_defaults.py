"""Defaults that depend on the model: the tiny model's quickstart values, or a real model's.

The code defaults of ``optim.lr`` (1e-3) and ``train.max_seq_len`` (128) are tuned for the
built-in character-level model of a few hundred thousand parameters. On a pretrained model
of 10^8+ parameters an lr of 1e-3 destroys it within a few steps, and 128 tokens cut most
chat rows. So when ``model.path`` names a real model and the user set neither key, the stage
gets the values the common trainers start from:

- SFT (and eval, generate, a config read without a stage): lr 2e-5, TRL's ``SFTConfig``
  default and torchtune's full fine-tune recipes' (e.g. ``llama3_2/1B_full``);
- GRPO: lr 1e-6, TRL's ``GRPOConfig`` default and DeepSeekMath's GRPO (Shao et al. 2024, 4.1.2);
- DPO: lr 1e-6, TRL's ``DPOConfig`` default (Zephyr, Tunstall et al. 2023, used 5e-7);
- rm: lr 1e-5, the order InstructGPT's reward models used (Ouyang et al. 2022, appendix C.2: 9e-6);
- every stage: ``train.max_seq_len`` 1024, TRL's ``SFTConfig.max_length`` default (still capped
  by the model's own context at load);
- every stage: ``train.logits_chunk`` 1024, the LM head and log-softmax over 1,024 positions at a
  time: the same values and gradients as the full logits (tests/unit/test_chunked_logprobs.py),
  and at a real vocabulary less memory and no slower: on SmolLM2-135M (49,152 columns) SFT
  92 -> 127 tokens/s and 8.1 -> 6.6 GB peak, GRPO 38.5 -> 32.1 s a step and 10.0 -> 8.4 GB
  (bench/RESULTS.md, 2026-12-02 real scale). The tiny model's 100-column head gains nothing;
- every stage: ``engine.packed_linears`` true, the torch sampler's linear layers through oneDNN
  on packed weights on a CPU (``posttrain.rollout.decoders.PackedLinears``): on SmolLM2-135M
  with 2 threads, fp32 decoding 14 -> 23, 78 -> 118 and 118 -> 146 tokens/s at batch 1, 16
  and 64 (bench/RESULTS.md, ninth session). Off by default so that the tiny model's sampler,
  and with it the golden traces, keep MKL's summation order.

"Real" is every ``model.path`` except a model of posttrain's own character tokenizer (the tiny
model, or a checkpoint trained from it), told by the ``vocab_size`` in its ``config.json``;
without ``model.path`` the tiny model is built, and the code defaults stay, so the quickstart
and the golden traces are unchanged. A value a file, a stage overlay or the command line gives
always wins.
"""

from __future__ import annotations

import dataclasses
import json
import string
from pathlib import Path
from typing import Any

from posttrain.config.sections import Config

# posttrain.models.tiny's vocabulary: 7 special tokens and the printable ASCII characters but
# three (a test checks it against char_tokenizer(); importing it here would load torch)
TINY_VOCAB_SIZE = 7 + len([c for c in string.printable if c not in "\x0b\x0c\r"])

REAL_LR = {"sft": 2e-5, "grpo": 1e-6, "dpo": 1e-6, "rm": 1e-5}  # by stage; any other stage: sft's
REAL_LR_SOURCE = {
    "sft": "TRL SFTConfig / torchtune full fine-tune",
    "grpo": "TRL GRPOConfig, DeepSeekMath GRPO",
    "dpo": "TRL DPOConfig",
    "rm": "InstructGPT reward models",
}
REAL_MAX_SEQ_LEN = 1024  # TRL SFTConfig.max_length
REAL_LOGITS_CHUNK = 1024  # positions per LM-head tile (measured, see the module docstring)
REAL_PACKED_LINEARS = True  # the sampler's linear layers through oneDNN (measured, see the module docstring)


def _given(data: dict[str, Any], key: str) -> bool:
    """Whether the user's mapping (file, stage overlay and overrides merged) holds the dotted ``key``."""
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _config_json(path: Path) -> dict[str, Any] | None:
    try:
        out = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return out if isinstance(out, dict) else None


def is_tiny_model(path: str) -> bool:
    """Whether ``path`` is a model of posttrain's character tokenizer (a LoRA adapter: its base's)."""
    p = Path(path)
    if not p.is_dir():
        return False  # a .gguf, pkg:..., or a Hub id: a real model
    cfg = _config_json(p)
    if cfg is None:  # an adapter directory names its base
        try:
            base = json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
        except (OSError, ValueError, AttributeError):
            return False
        return isinstance(base, str) and base != path and (Path(base) / "config.json").is_file() and is_tiny_model(base)
    return cfg.get("vocab_size") == TINY_VOCAB_SIZE


def resolve(cfg: Config, data: dict[str, Any], stage: str | None, notes: list[str]) -> Config:
    """``cfg`` with the real-model defaults of the keys the user left out; each one applied noted in ``notes``."""
    if cfg.model.path is None or is_tiny_model(cfg.model.path):
        which = "unset: the tiny model is built" if cfg.model.path is None else "posttrain's tiny model"
        for key, value in (("optim.lr", cfg.optim.lr), ("train.max_seq_len", cfg.train.max_seq_len)):
            if not _given(data, key):
                notes.append(f"{key}: {value:g}, the tiny model's default (model.path {which})")
        return cfg
    lr_stage = stage if stage in REAL_LR else "sft"
    train, optim = cfg.train, cfg.optim
    why = f"model.path is a real model ({cfg.model.path}), not posttrain's tiny one"
    if not _given(data, "optim.lr"):
        optim = dataclasses.replace(optim, lr=REAL_LR[lr_stage])
        notes.append(
            f"optim.lr: {optim.lr:g}, the {lr_stage} default of a real model ({REAL_LR_SOURCE[lr_stage]}): {why}"
        )
    if not _given(data, "train.max_seq_len"):
        train = dataclasses.replace(train, max_seq_len=REAL_MAX_SEQ_LEN)
        notes.append(f"train.max_seq_len: {REAL_MAX_SEQ_LEN}, a real model's default (TRL SFTConfig.max_length): {why}")
    if not _given(data, "train.logits_chunk"):
        train = dataclasses.replace(train, logits_chunk=REAL_LOGITS_CHUNK)
        notes.append(
            f"train.logits_chunk: {REAL_LOGITS_CHUNK}, a real model's default (its large LM head in tiles): {why}"
        )
    engine = cfg.engine
    if not _given(data, "engine.packed_linears"):
        engine = dataclasses.replace(engine, packed_linears=REAL_PACKED_LINEARS)
        notes.append(
            f"engine.packed_linears: {str(REAL_PACKED_LINEARS).lower()}, a real model's default (the sampler's "
            f"linear layers through oneDNN on a CPU): {why}"
        )
    return dataclasses.replace(cfg, train=train, optim=optim, engine=engine)
