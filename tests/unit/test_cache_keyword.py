"""The generic decode path names the KV cache the way the installed transformers does.

transformers 5.24 renamed the forward's ``past_key_values`` to ``cache`` (the old
name is removed in 5.40); ``HFDecoder`` reads which one a model's forward takes
and must sample the same tokens either way, with no deprecation warning.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import transformers

from posttrain.models.io import load_model, load_tokenizer
from posttrain.rollout import decoders
from posttrain.rollout.base import SamplingParams
from posttrain.rollout.decoders import HFDecoder, cache_keyword
from posttrain.rollout.torch_engine import TorchEngine

PROMPTS = ["1+2=?\n", "12+30-5+1=?\n", "9=?\n"]  # different lengths: left padding


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _generate_strictly(engine: TorchEngine, prompts: list[list[int]]) -> None:
    """A short generate in which any warning is an error and transformers logs no deprecation."""
    transformers.utils.logging.warning_once.cache_clear()  # a message logged earlier would be skipped
    records = _Records()
    logger = logging.getLogger("transformers")
    logger.addHandler(records)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            outs = engine.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=6, seed=1))
    finally:
        logger.removeHandler(records)
    assert all(c.completion_ids for c in outs)
    assert not [m for m in records.messages if "deprecat" in m.lower()], records.messages


def test_generic_decode_raises_no_deprecation_warning(tiny_dir: Path) -> None:
    model, tok = load_model(tiny_dir), load_tokenizer(tiny_dir)
    engine = TorchEngine(model, tok, batch_size=3, fast=False)
    _generate_strictly(engine, [tok(t)["input_ids"] for t in PROMPTS])


def test_generic_decode_of_a_lora_model_raises_no_deprecation_warning(tiny_dir: Path) -> None:
    """A PeftModel's forward takes only **kwargs: the keyword is read from the model it wraps."""
    from peft import LoraConfig, get_peft_model

    model, tok = load_model(tiny_dir), load_tokenizer(tiny_dir)
    with warnings.catch_warnings():  # wrapping is not what is under test
        warnings.simplefilter("ignore")
        wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert cache_keyword(wrapped) == cache_keyword(model)
    engine = TorchEngine(wrapped, tok, batch_size=3, fast=False)  # type: ignore[arg-type]
    _generate_strictly(engine, [tok(t)["input_ids"] for t in PROMPTS])


def test_the_keyword_is_the_installed_releases() -> None:
    """`cache` exactly where the model's forward has it (5.24+); `past_key_values` before."""
    config = transformers.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    model = transformers.LlamaForCausalLM(config)
    expected = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    assert cache_keyword(model) == expected


class _OldNames(torch.nn.Module):
    """A causal LM written against transformers before 5.24: its forward takes and returns `past_key_values`."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner
        self.keyword = cache_keyword(inner)
        self.calls: list[bool] = []

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = None,
    ) -> SimpleNamespace:
        self.calls.append(past_key_values is not None)
        kwargs = {self.keyword: past_key_values} if past_key_values is not None else {}
        out = self.inner(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache, **kwargs
        )
        return SimpleNamespace(logits=out.logits, past_key_values=getattr(out, self.keyword))


def test_a_forward_with_the_old_name_gets_the_old_name_and_the_same_logits(tiny_dir: Path) -> None:
    model, tok = load_model(tiny_dir), load_tokenizer(tiny_dir)
    model.eval()
    old = _OldNames(model)
    assert cache_keyword(old) == "past_key_values"
    ids = [tok(t)["input_ids"] for t in PROMPTS]
    L = max(len(p) for p in ids)
    input_ids = torch.tensor([[0] * (L - len(p)) + p for p in ids])
    attention = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in ids])
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    runs = []
    with torch.no_grad():
        for decoder in (HFDecoder(model), HFDecoder(old)):  # type: ignore[arg-type]
            logits, att, pos = [decoder.prefill(input_ids, attention, positions)], attention, positions[:, -1:] + 1
            for t in range(4):
                if t == 2:  # a row leaves the batch, its cache rows too
                    keep = torch.tensor([0, 2])
                    decoder.select(keep)
                    att, pos, logits[-1] = att[keep], pos[keep], logits[-1][keep]
                att = torch.cat([att, torch.ones_like(att[:, :1])], dim=1)
                logits.append(decoder.step(logits[-1].argmax(-1, keepdim=True), att, pos))
                pos = pos + 1
            runs.append(logits)
    assert old.calls == [False, True, True, True, True]  # the cache went in under the old name
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_the_keyword_is_read_once_per_model(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_model(tiny_dir)
    reads: list[object] = []
    original = decoders._read_cache_keyword

    def counted(m: torch.nn.Module) -> str:
        reads.append(m)
        return original(m)

    monkeypatch.setattr(decoders, "_read_cache_keyword", counted)
    first = HFDecoder(model).keyword
    assert HFDecoder(model).keyword == first and cache_keyword(model) == first
    assert reads == [model]
