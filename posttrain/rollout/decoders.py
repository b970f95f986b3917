"""Two ways to run a causal LM one step at a time; the sampler picks one.

``HFDecoder`` calls the model's own forward with its dynamic cache: it works for
every Hugging Face causal LM. The forward's cache keyword was renamed in
transformers 5.24 (``past_key_values`` -> ``cache``, the old name going in 5.40);
``cache_keyword`` reads which one a model's forward takes, so each release gets
its own name and no deprecation warning.

``StaticLlamaDecoder`` is the fast path for the Llama family (Llama, Mistral,
Qwen2): it walks the same modules (so it reads the trainer's live weights and
needs no sync) but keeps keys and values in one preallocated tensor per layer and
builds the attention mask itself. That removes the per-step work the generic
path does in Python (cache objects growing by concatenation, mask construction,
output dataclasses), which is most of a decode step's time for small models and
small batches. It is checked against ``HFDecoder`` token for token and logprob
for logprob in the tests.

Both take left-padded ``input_ids`` (B, T) with ``attention`` (B, T) and
``positions`` (B, T), and return the last position's logits (B, V). With
``keep_hidden`` set, each call also leaves the last position's final hidden state
(B, H), the one ``lm_head`` reads, in ``hidden``: what a temperature head reads
(``posttrain.models.temperature_head``).

On a CPU, ``StaticLlamaDecoder`` can run its linear layers through oneDNN on weights
reordered once into oneDNN's blocked layout (``PackedLinears``) instead of through
``F.linear``, which calls MKL: on SmolLM2-135M's shapes with 2 threads that is 1.6x
(batch 1), 2.3x (16) and 2.0x (64) the speed of a decode step's matmuls in fp32, and
1.45-1.75x in bf16 (bench/RESULTS.md, ninth session; MKL's small-row GEMMs use about
one core there). The packed copy is rebuilt whenever its weight changes (the
tensor's version counter: an optimiser step or a weight sync), so it never serves
stale weights; its values differ from MKL's by summation order only (the tiny
test model's logprobs to 1e-5, its tokens not at all: tests/unit/test_packed_linears.py).
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Mapping
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

FAST_MODEL_TYPES = {"llama", "mistral", "qwen2"}


class Decoder(Protocol):
    hidden: torch.Tensor | None  # the last call's final hidden state (B, H), when kept (keep_hidden)

    def prefill(self, input_ids: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor) -> torch.Tensor: ...

    def step(self, tokens: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor) -> torch.Tensor: ...

    def select(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows of the cache (finished rows leave the batch)."""
        ...


# the model's forward's cache keyword, read once per model (a model's class and wrappers do not change)
_CACHE_KEYWORDS: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()


def cache_keyword(model: torch.nn.Module) -> str:
    """``"cache"`` where the model's forward takes the KV cache by that name (transformers 5.24+),
    else ``"past_key_values"`` (4.x to 5.23, and remote code written for them).

    Wrappers whose forward only passes ``**kwargs`` on (a peft ``PeftModel``, DDP,
    ``torch.compile``) are looked through to the model they wrap. The output field
    has the same name as the keyword in every release.
    """
    name = _CACHE_KEYWORDS.get(model)
    if name is None:
        name = _CACHE_KEYWORDS[model] = _read_cache_keyword(model)
    return name


def _read_cache_keyword(model: torch.nn.Module) -> str:
    seen: set[int] = set()
    m: Any = model
    while m is not None and id(m) not in seen:
        seen.add(id(m))
        params: Mapping[str, Any]
        try:
            params = inspect.signature(m.forward).parameters  # follows the deprecation decorators' __wrapped__
        except (TypeError, ValueError):
            params = {}
        for name in ("cache", "past_key_values"):
            if name in params:
                return name
        get_base = getattr(m, "get_base_model", None)
        m = get_base() if callable(get_base) else getattr(m, "_orig_mod", None) or getattr(m, "module", None)
    # a forward that names neither: the name this transformers' outputs carry
    return "cache" if "cache" in getattr(CausalLMOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"


class HFDecoder:
    def __init__(self, model: PreTrainedModel, keep_hidden: bool = False) -> None:
        self.model = model
        self.keyword = cache_keyword(model)
        self.cache: Any = None
        self.keep_hidden = keep_hidden
        self.hidden: torch.Tensor | None = None

    def prefill(self, input_ids: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True,
                         **self._hidden_kwargs())  # fmt: skip
        self.cache = getattr(out, self.keyword)
        return self._last(out)

    def step(self, tokens: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self.model(
            input_ids=tokens, attention_mask=attention, position_ids=positions, use_cache=True,
            **{self.keyword: self.cache}, **self._hidden_kwargs(),
        )  # fmt: skip
        self.cache = getattr(out, self.keyword)
        return self._last(out)

    def _hidden_kwargs(self) -> dict[str, bool]:
        return {"output_hidden_states": True} if self.keep_hidden else {}

    def _last(self, out: Any) -> torch.Tensor:
        if self.keep_hidden:
            self.hidden = out.hidden_states[-1][:, -1]
        return out.logits[:, -1]

    def select(self, rows: torch.Tensor) -> None:
        self.cache.reorder_cache(rows)


def supports_static_decode(model: PreTrainedModel) -> bool:
    """The Llama-family layout this decoder walks, without extras it does not implement."""
    cfg = model.config
    if getattr(cfg, "model_type", None) not in FAST_MODEL_TYPES:
        return False
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return False  # Mistral/Qwen2 with a sliding window attend differently
    inner = getattr(model, "model", None)  # a wrapped model (e.g. with adapters) takes the generic path
    layers = getattr(inner, "layers", None)
    if not layers or not all(hasattr(inner, n) for n in ("embed_tokens", "rotary_emb", "norm")):
        return False
    attn = getattr(layers[0], "self_attn", None)
    needed = ("q_proj", "k_proj", "v_proj", "o_proj", "scaling")
    mlp = getattr(layers[0], "mlp", None)
    gated = all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn"))
    return all(hasattr(attn, n) for n in needed) and not hasattr(attn, "q_norm") and gated


# A prefill group's fixed cost, in padded prompt tokens: a group is split off only when it saves more
# padding than this (each group is one more forward through every layer).
PREFILL_GROUP_TOKENS = 64


def prefill_groups(lengths: list[int]) -> list[tuple[list[int], int]]:
    """Rows grouped by prompt length, each group to be prefilled padded to its own longest prompt.

    Left padding to the batch's longest prompt makes a prefill of rows of 60 to 146
    tokens (GSM8K questions with a chat template) a third padding. The groups, and
    each one's width, minimise padded tokens plus ``PREFILL_GROUP_TOKENS`` a group:
    exact, by dynamic programming over the lengths sorted longest first (a best
    split only ever groups neighbours in that order).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    ls = [lengths[i] for i in order]
    best, cut = [0] + [-1] * len(ls), [0] * (len(ls) + 1)  # best[j]: cost of the first j sorted rows
    for j in range(1, len(ls) + 1):
        for i in range(j):  # the last group is sorted rows i..j-1, as wide as row i
            cost = best[i] + (j - i) * ls[i] + PREFILL_GROUP_TOKENS
            if best[j] < 0 or cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], len(ls)
    while j > 0:
        groups.append((order[cut[j] : j], ls[cut[j]]))
        j = cut[j]
    return groups[::-1]


def packing_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether oneDNN can run packed linear layers of this device and dtype (a CPU build with oneDNN)."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return dtype == torch.float32


class PackedLinears:
    """``nn.Linear`` layers that read the same input, as one oneDNN matmul on a packed copy of their weights.

    ``linears((q_proj, k_proj, v_proj), x)`` is ``cat([q_proj(x), k_proj(x), v_proj(x)], -1)``:
    one call instead of three, on one weight made once by concatenating theirs. The copy
    is made at the first call and again whenever one of its weight tensors is replaced or
    written in place (its ``_version`` moves: optimiser steps, ``load_state_dict``, ``copy_``);
    the engine keeps one ``PackedLinears`` across calls, so weights that did not change are
    not packed again. Holds one packed copy of every weight it has run.
    """

    def __init__(self) -> None:
        # the layers' ids -> (their weights, the weights' versions, packed weight, packed bias)
        self._packed: dict[tuple[int, ...], tuple[tuple[torch.Tensor, ...], tuple[int, ...], torch.Tensor, Any]] = {}

    def __call__(self, layers: tuple[torch.nn.Linear, ...], x: torch.Tensor) -> torch.Tensor:
        key = tuple(id(layer) for layer in layers)
        weights = tuple(layer.weight for layer in layers)
        versions = tuple(w._version for w in weights)
        hit = self._packed.get(key)
        if hit is None or hit[1] != versions or any(a is not b for a, b in zip(hit[0], weights)):
            hit = (weights, versions, *self._pack(layers))
            self._packed[key] = hit
        return torch.ops.mkldnn._linear_pointwise(x, hit[2], hit[3], "none", [], "")

    @staticmethod
    def _pack(layers: tuple[torch.nn.Linear, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight = (
            torch.cat([layer.weight.detach() for layer in layers]) if len(layers) > 1 else layers[0].weight.detach()
        )
        bias = None
        if any(layer.bias is not None for layer in layers):
            bias = torch.cat([
                layer.bias.detach() if layer.bias is not None else weight.new_zeros(layer.out_features)
                for layer in layers
            ])  # fmt: skip
        return torch.ops.mkldnn._reorder_linear_weight(weight, None), bias


class StaticLlamaDecoder:
    def __init__(
        self, model: PreTrainedModel, max_len: int, keep_hidden: bool = False, linears: PackedLinears | None = None,
    ) -> None:  # fmt: skip
        """``linears``: run the linear layers through it (oneDNN, packed weights) instead of each layer's forward."""
        self.model = model
        self.packed = linears
        self.max_len = max_len
        self.keep_hidden = keep_hidden
        self.hidden: torch.Tensor | None = None
        cfg = model.config
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.length = 0
        self.rows = 0  # the cache's batch rows
        self.zeroed = False  # caches start as zeros: a narrower prefill group leaves its rows' first slots unwritten

    def prefill(self, input_ids: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The prompts' caches and last logits; rows of much shorter prompts are run apart (``prefill_groups``)."""
        B, L = input_ids.shape
        self.keys, self.values, self.length, self.rows = [], [], 0, B
        groups = prefill_groups(attention.sum(-1).tolist()) if B > 1 else [(list(range(B)), L)]
        self.zeroed = len(groups) > 1
        if not self.zeroed:
            logits = self._forward(input_ids, attention, positions)
        else:
            parts = []
            for group, width in groups:
                rows, s = torch.tensor(group, device=input_ids.device), L - width
                part = self._forward(input_ids[rows, s:], attention[rows, s:], positions[rows, s:], rows, s)
                parts.append((rows, part, self.hidden))
            logits = parts[0][1].new_empty((B, parts[0][1].shape[-1]))
            for rows, part, _ in parts:
                logits[rows] = part
            if self.keep_hidden:
                self.hidden = torch.cat([h for _, _, h in parts if h is not None])[
                    torch.cat([r for r, _, _ in parts]).argsort()
                ]
        self.length = L
        return logits

    def step(self, tokens: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self._forward(tokens, attention, positions)

    def select(self, rows: torch.Tensor) -> None:
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self.rows = len(rows)

    def _forward(
        self, ids: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor,
        rows: torch.Tensor | None = None, start: int | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """Run ``ids`` (B, T) at cache slots [start, start + T) (default: the next free ones) of ``rows`` (default:
        all); ``attention`` covers those slots in a prefill (its keys are its own), all slots so far in a step."""
        inner = self.model.model
        T = ids.shape[1]
        prefill = self.length == 0
        start = self.length if start is None else start
        h = inner.embed_tokens(ids)
        cos, sin = inner.rotary_emb(h, positions)
        mask = self._mask(attention, 0, T) if prefill else self._mask(attention, start, start + T)
        for i, layer in enumerate(inner.layers):
            attn = self._attention(i, layer.self_attn, layer.input_layernorm(h), cos, sin, mask, start, rows, prefill)
            h = h + attn
            h = h + self._mlp(layer.mlp, layer.post_attention_layernorm(h))
        if not prefill:
            self.length = start + T
        last = inner.norm(h[:, -1])
        if self.keep_hidden:
            self.hidden = last
        return self._linear(self.model.lm_head, last)

    def _linear(self, layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return layer(x) if self.packed is None else self.packed((layer,), x)

    def _mlp(self, mlp: Any, x: torch.Tensor) -> torch.Tensor:
        """The gated MLP of the Llama family, down(act(gate(x)) * up(x)), gate and up as one packed matmul."""
        if self.packed is None:
            return mlp(x)
        gate, up = self.packed((mlp.gate_proj, mlp.up_proj), x).chunk(2, dim=-1)
        return self.packed((mlp.down_proj,), mlp.act_fn(gate) * up)

    def _mask(self, attention: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """(B, 1, T, end) bool: causal over slots, real keys only, and always the query's own slot.

        The diagonal keeps padding queries (whose outputs are discarded) from having
        no key at all, which would make attention produce NaNs.
        """
        slots = torch.arange(end, device=attention.device)
        queries = torch.arange(start, end, device=attention.device)
        causal = slots[None, :] <= queries[:, None]  # (T, end)
        keys = attention[:, None, :end].bool()  # (B, 1, end)
        return ((causal[None] & keys) | (slots[None, :] == queries[:, None])[None])[:, None]

    def _attention(
        self, i: int, attn: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
        start: int, rows: torch.Tensor | None, prefill: bool,
    ) -> torch.Tensor:  # fmt: skip
        B, T, _ = x.shape
        if self.packed is None:
            q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        else:
            width = self.kv_heads * self.head_dim
            q, k, v = self.packed((attn.q_proj, attn.k_proj, attn.v_proj), x).split(
                [self.heads * self.head_dim, width, width], dim=-1
            )
        q = q.view(B, T, self.heads, self.head_dim).transpose(1, 2)
        k = k.reshape(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.reshape(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if len(self.keys) <= i:  # first call: allocate this layer's whole cache once
            shape = (self.rows, self.kv_heads, self.max_len, self.head_dim)
            new = torch.zeros if self.zeroed else torch.empty
            self.keys.append(new(shape, dtype=k.dtype, device=k.device))
            self.values.append(new(shape, dtype=v.dtype, device=v.device))
        end = start + T
        if rows is None:
            self.keys[i][:, :, start:end] = k
            self.values[i][:, :, start:end] = v
        else:
            self.keys[i][rows, :, start:end] = k
            self.values[i][rows, :, start:end] = v
        if prefill:  # the prompt attends to itself only
            keys, values = k, v
        else:
            keys, values = self.keys[i][:, :, :end], self.values[i][:, :, :end]
        if T == 1:  # a decode step: two small matmuls beat the fused kernel's set-up for one query
            out = _one_query_attention(q, keys, values, mask, attn.scaling)
        else:
            out = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=mask, scale=attn.scaling, enable_gqa=self.kv_heads != self.heads
            )
        return self._linear(attn.o_proj, out.transpose(1, 2).reshape(B, T, self.heads * self.head_dim))


def _one_query_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """softmax(q k^T * scale, masked) v for q (B, H, 1, D) over keys/values (B, H_kv, S, D).

    Grouped-query attention: the H query heads are viewed as (H_kv, H / H_kv) so
    each group reads its shared key/value head without copying it.
    """
    B, H, _, D = q.shape
    Hkv, S = keys.shape[1], keys.shape[2]
    qg = q.reshape(B, Hkv, H // Hkv, D)
    scores = torch.matmul(qg, keys.transpose(-1, -2)) * scale  # (B, Hkv, H/Hkv, S)
    scores = scores.masked_fill(~mask.view(B, 1, 1, S), float("-inf"))
    out = torch.matmul(scores.softmax(-1, dtype=torch.float32).to(values.dtype), values)  # (B, Hkv, H/Hkv, D)
    return out.reshape(B, H, 1, D)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021) in the half-split layout HF Llama uses."""
    cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)
