"""The chunked LM head (``train.logits_chunk``) gives every loss the full path's values and gradients.

Each test computes one loss twice on the same fp32 model and batch: through the full
(B, T, V) logits (``chunk=0``) and through the chunked head, and compares the loss,
its metrics and the gradient of every parameter. Chunk sizes cover one token per
chunk, an uneven split and one chunk larger than the batch. Positions outside
``response_mask`` are 0 on the chunked path (no loss reads them).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from posttrain.algorithms.grpo import LOSS_WEIGHTS, rl_loss
from posttrain.algorithms.logprobs import output_head, token_logprobs
from posttrain.algorithms.sft import sft_loss
from posttrain.config import DPOConfig, load_config
from posttrain.data.batch import TokenBatch, collate, pack
from posttrain.data.pairs import collate_pairs
from posttrain.errors import ConfigError, ModelError
from posttrain.eval.sampling import heldout_nll_terms
from posttrain.models.tiny import char_tokenizer
from posttrain.recipes.pairwise import dpo_loss_fn
from posttrain.tasks.base import Example
from posttrain.train.reference import sequence_logps

CHUNKS = [1, 5, 4096]


def _rows(seed: int, n: int, vocab: int = 60) -> tuple[list[list[int]], list[list[int]]]:
    """Rows of unequal lengths, so the batch has padding on the right of most of them."""
    gen = torch.Generator().manual_seed(seed)
    prompts, completions = [], []
    for _ in range(n):
        p, c = (int(x) for x in torch.randint(2, 10, (2,), generator=gen))
        prompts.append(torch.randint(3, vocab, (p,), generator=gen).tolist())
        completions.append(torch.randint(3, vocab, (c,), generator=gen).tolist())
    return prompts, completions


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _both(model: torch.nn.Module, chunk: int, loss: Callable[[int], torch.Tensor]) -> None:
    """loss(chunk) -> scalar: the same value and the same gradient of every parameter as loss(0)."""
    out = {}
    for c in (0, chunk):
        model.zero_grad()
        value = loss(c)
        value.backward()
        out[c] = (value.detach(), _grads(model))
    (v0, g0), (v1, g1) = out[0], out[chunk]
    torch.testing.assert_close(v1, v0, rtol=1e-6, atol=1e-6)
    assert g0 and g0.keys() == g1.keys()
    for name in g0:
        close = torch.isclose(g1[name], g0[name], rtol=1e-4, atol=1e-6)
        assert bool(close.all()), f"{name}: max gap {float((g1[name] - g0[name]).abs().max()):.3g}"


@pytest.fixture(scope="module")
def model(tiny_dir: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_sft_nll_and_gradient(model: torch.nn.Module, chunk: int) -> None:
    batch = collate(*_rows(0, 6), pad_id=0)
    _both(model, chunk, lambda c: sft_loss(token_logprobs(model, batch, chunk=c)[0], batch.response_mask).loss_sum)


def test_values_on_response_tokens_are_the_full_paths_and_zero_elsewhere(model: torch.nn.Module) -> None:
    batch = collate(*_rows(1, 5), pad_id=0)
    with torch.no_grad():
        full, full_ent = token_logprobs(model, batch, 0.7, with_entropy=True)
        lp, ent = token_logprobs(model, batch, 0.7, with_entropy=True, chunk=4)
    assert lp is not None and ent is not None and full_ent is not None
    mask = batch.response_mask > 0
    torch.testing.assert_close(lp[mask], full[mask], rtol=0, atol=1e-6)
    torch.testing.assert_close(ent[mask], full_ent[mask], rtol=0, atol=1e-6)
    assert (lp[~mask] == 0).all() and (ent[~mask] == 0).all()
    assert (lp[mask] < 0).all() and (ent[mask] > 0).all()


@pytest.mark.parametrize("chunk", CHUNKS)
def test_grpo_policy_loss_with_entropy_bonus_packed(model: torch.nn.Module, chunk: int) -> None:
    """Clipped ratio, KL to a reference and an entropy bonus at temperature 0.7, on packed rows."""
    prompts, completions = _rows(2, 8)
    batch = collate(prompts, completions, pad_id=0)
    gen = torch.Generator().manual_seed(0)
    width = batch.response_mask.shape[1]
    with torch.no_grad():
        old, _ = token_logprobs(model, batch, 0.7)
    weights, _ = LOSS_WEIGHTS["seq_mean"](batch.response_mask, 16)
    batch.extra = {
        "old_logprobs": (old + 0.3 * torch.randn(old.shape, generator=gen)) * batch.response_mask,
        "ref_logprobs": (old + 0.1 * torch.randn(old.shape, generator=gen)) * batch.response_mask,
        "advantages": torch.randn(len(prompts), 1, generator=gen).expand(-1, width).contiguous(),
        "weights": weights,
    }
    packed = pack(batch)
    metrics: dict[int, dict[str, float]] = {}

    def loss(c: int) -> torch.Tensor:
        lp, ent = token_logprobs(model, packed, 0.7, with_entropy=True, entropy_grad=True, chunk=c)
        x = packed.extra
        out = rl_loss(policy_loss="ppo_clip", logprobs=lp, old_logprobs=x["old_logprobs"],
                      advantages=x["advantages"], response_mask=packed.response_mask, weights=x["weights"],
                      clip_low=0.2, clip_high=0.28, ref_logprobs=x["ref_logprobs"], kl_coef=0.05,
                      entropy=ent, entropy_coef=0.1)  # fmt: skip
        metrics[c] = {k: a / n for k, (a, n) in out.metrics.items()}
        return out.loss_sum

    _both(model, chunk, loss)
    assert {"ratio", "clip_frac", "kl", "entropy"} <= metrics[0].keys()
    assert metrics[chunk] == pytest.approx(metrics[0], rel=1e-5, abs=1e-7)


def test_entropy_bonus_gradient_alone(model: torch.nn.Module) -> None:
    """The entropy term's own gradient (d H / dz = -p (log p + H)) through the recomputing backward."""
    batch = collate(*_rows(3, 4), pad_id=0)

    def loss(c: int) -> torch.Tensor:
        _, ent = token_logprobs(model, batch, 1.3, with_entropy=True, entropy_grad=True, chunk=c)
        assert ent is not None
        return (ent * batch.response_mask).sum()

    _both(model, 3, loss)


def test_entropy_without_grad_stays_a_metric(model: torch.nn.Module) -> None:
    batch = collate(*_rows(3, 2), pad_id=0)
    lp, ent = token_logprobs(model, batch, with_entropy=True, chunk=4)
    assert ent is not None and lp.requires_grad and not ent.requires_grad


@pytest.mark.parametrize("chunk", [1, 7])
def test_dpo_loss_and_gradient(model: Any, chunk: int) -> None:
    prompts, completions = _rows(4, 6)
    sequences = list(zip(prompts, completions))
    ref = sequence_logps(model, sequences, 0, 4) - 0.5
    batch = collate_pairs(sequences, [(0, 1, 1.0), (2, 3, 0.5), (4, 5, 2.0)], 0, ref)
    _both(model, chunk, lambda c: dpo_loss_fn(model, DPOConfig(beta=0.1), logits_chunk=c)(batch).loss_sum)


def test_reference_sequence_logprobs(model: Any) -> None:
    prompts, completions = _rows(5, 7)
    sequences = list(zip(prompts, completions))
    full = sequence_logps(model, sequences, 0, 3)
    torch.testing.assert_close(sequence_logps(model, sequences, 0, 3, logits_chunk=4), full, rtol=0, atol=1e-5)


def test_eval_heldout_nll(tiny_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    tok = char_tokenizer()
    examples = [Example(id=str(i), prompt=f"{i}+{i}=?\n", completion=f"{i}+{i}={2 * i}#{2 * i}") for i in range(5)]
    full = heldout_nll_terms(model, tok, examples, 2)
    chunked = heldout_nll_terms(model, tok, examples, 2, logits_chunk=8)
    assert [n for _, n in chunked] == [n for _, n in full]
    assert [round(v, 4) for v, _ in chunked] == [round(v, 4) for v, _ in full]
    assert all(v > 0 for v, _ in full)


def _tiny(kind: str, **extra: object) -> torch.nn.Module:
    """A one-layer model of an architecture whose head does something besides a bare matmul."""
    from transformers import AutoConfig

    base = {"vocab_size": 61, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16, **extra}  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(kind, **base), dtype=torch.float32)


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("gemma2", {"final_logit_softcapping": 0.5, "tie_word_embeddings": True}),  # a tight cap: tanh matters
        ("cohere", {"logit_scale": 0.37}),
        ("granite", {"logits_scaling": 3.0}),
        ("phi", {"partial_rotary_factor": 0.5}),  # lm_head with a bias
        ("llama", {"tie_word_embeddings": False}),  # an untied head
    ],
)
def test_other_heads(kind: str, extra: dict[str, object]) -> None:
    model = _tiny(kind, **extra)
    batch = collate(*_rows(6, 4), pad_id=0)

    def loss(c: int) -> torch.Tensor:
        lp, ent = token_logprobs(model, batch, 0.8, with_entropy=True, entropy_grad=True, chunk=c)
        assert ent is not None
        return ((lp + 0.3 * ent) * batch.response_mask).sum()

    _both(model, 3, loss)


def test_lora_policy_and_its_base_as_reference(tiny_dir: Path) -> None:
    """peft-wrapped: adapters on the attention and (checkpointed path) on the head itself."""
    from peft import LoraConfig, get_peft_model

    from posttrain.models.lora import BaseView

    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    base.config.tie_word_embeddings = False
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False)
    model = get_peft_model(base, lora)
    assert not output_head(model).plain_linear  # the head is a LoRA layer: recomputed by checkpointing
    batch = collate(*_rows(7, 5), pad_id=0)

    def loss(c: int) -> torch.Tensor:
        lp, ent = token_logprobs(model, batch, with_entropy=True, entropy_grad=True, chunk=c)
        assert ent is not None
        return ((lp - 0.1 * ent) * batch.response_mask).sum()

    _both(model, 4, loss)
    ref = BaseView(model)
    with torch.no_grad():
        full, _ = token_logprobs(ref, batch)  # type: ignore[arg-type]
        chunked, _ = token_logprobs(ref, batch, chunk=4)  # type: ignore[arg-type]
        policy, _ = token_logprobs(model, batch)
    mask = batch.response_mask > 0
    torch.testing.assert_close(chunked[mask], full[mask], rtol=0, atol=1e-6)
    assert (policy[mask] - full[mask]).abs().max() > 1e-3  # the view really has its adapters off


def test_bf16_autocast_stays_close() -> None:
    """Under ``train.mixed_precision=bf16`` the head matmul is bf16 on both paths."""
    model = _tiny("llama")
    batch = collate(*_rows(8, 4), pad_id=0)
    mask = batch.response_mask > 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        full, _ = token_logprobs(model, batch)
        chunked, _ = token_logprobs(model, batch, chunk=5)
    torch.testing.assert_close(chunked[mask], full[mask], rtol=0, atol=2e-2)


class _DoubledLogits(LlamaForCausalLM):
    """An architecture that rescales its logits in a way the chunked head does not know."""

    def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 2.0
        return out


def test_an_unknown_logit_transform_is_refused() -> None:
    cfg = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    model = _DoubledLogits(cfg)
    batch = collate(*_rows(9, 2), pad_id=0)
    with pytest.raises(ModelError, match=r"train\.logits_chunk: _DoubledLogits's logits are not its head"):
        token_logprobs(model, batch, chunk=4)


def test_negative_chunk_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"train\.logits_chunk: must be >= 0"):
        load_config(None, ["train.logits_chunk=-1"])


def test_a_batch_without_response_tokens_still_backpropagates(model: torch.nn.Module) -> None:
    batch = collate(*_rows(10, 2), pad_id=0)
    empty = TokenBatch(batch.input_ids, batch.attention_mask, torch.zeros_like(batch.response_mask))
    model.zero_grad()
    lp, _ = token_logprobs(model, empty, chunk=4)
    sft_loss(lp, empty.response_mask).loss_sum.backward()
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
