"""Per-token log-probabilities and entropy from one forward pass.

The one place logits become logprobs, so SFT, DPO, GRPO, the reference and
evaluation agree with each other and with the sampler (which uses the same
``softmax(logits / T)``).

Two paths give the same values and gradients (tested):

- full (``chunk=0``, the default): the model's forward returns every position's
  logits, (B, T, V), and ``gather_logprobs`` reduces them. At a real vocabulary
  those logits dominate memory: 8 x 512 tokens at V = 152k are 2.5 GB in fp32,
  and backward keeps that again for the softmax.
- chunked (``chunk=n``): the forward stops at the final hidden states (B, T, H);
  the LM head and the log-softmax run over ``n`` predicted tokens at a time, and
  only at the positions a loss reads (``response_mask``; the others come back 0).
  ``_ChunkedHeadLogprobs`` keeps no chunk's logits for backward: it saves the
  hidden states and each token's logsumexp, and recomputes one chunk's logits at
  a time in backward, accumulating the head's gradient in place. Peak memory in
  the head is then a few (n, V) blocks instead of several (B, T, V) tensors. This
  is the chunked (or "fused linear") cross-entropy of Liger-Kernel
  (Hsu et al. 2024, arXiv:2410.10989, section 3.3), with the entropy added.

Logit transforms some architectures apply after the head (Gemma's
``final_logit_softcapping``, Cohere's ``logit_scale``, Granite's
``logits_scaling``) are applied per chunk; every model's head is checked once
against the model's own last-position logits, so an architecture that does
something else fails in one line instead of training on wrong logprobs.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from posttrain.data.batch import TokenBatch, row_sums
from posttrain.errors import ModelError

CHUNK_FIELD = "train.logits_chunk"


def gather_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits (B, T, V), targets (B, T) -> (B, T) log p(target).

    ``logsumexp`` minus the gathered logit avoids materialising a second (B, T, V)
    tensor of log-softmax values, which matters for large vocabularies.
    """
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def entropy_from_logits(logits: torch.Tensor, grad: bool = False) -> torch.Tensor:
    """(B, T, V) -> (B, T) entropy of softmax(logits): logsumexp(z) - sum softmax(z) * z.

    Without gradient by default (a metric). ``grad=True`` keeps the graph, for an
    entropy bonus in the loss; backward then holds one more (B, T, V) softmax.
    """
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        logits = logits.float()
        lse = logits.logsumexp(-1)
        return lse - (logits.softmax(-1) * logits).sum(-1)


def token_logprobs(
    model: torch.nn.Module,
    batch: TokenBatch,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    chunk: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logprobs (B, T-1) of ``input_ids[:, 1:]`` under ``softmax(logits / temperature)``.

    ``with_entropy`` also returns the (B, T-1) entropy of that distribution, detached
    unless ``entropy_grad`` (needed when the loss has an entropy bonus).

    ``chunk`` > 0: the chunked path (module docstring), ``chunk`` predicted tokens per
    block, values only where ``batch.response_mask`` is set and 0 elsewhere.

    ``model`` is an HF causal LM, or a wrapper that forwards like one (DDP in training,
    peft, the LoRA reference view). A packed batch (``posttrain.data.batch.pack``) is
    passed as ``position_ids`` without a mask, which ``transformers`` reads as packed
    sequences.
    """
    if batch.shared is not None:
        return _shared_token_logprobs(model, batch, temperature, with_entropy, entropy_grad, chunk)
    if chunk > 0:
        return chunked_token_logprobs(model, batch, temperature, with_entropy, entropy_grad, chunk)
    out = model(**_forward_inputs(batch), use_cache=False)
    logits = out.logits[:, :-1]
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    logprobs = gather_logprobs(logits, batch.input_ids[:, 1:])
    entropy = entropy_from_logits(logits, grad=entropy_grad) if with_entropy else None
    return logprobs, entropy


def response_sums(
    model: torch.nn.Module, tokens: TokenBatch, n: int, chunk: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed response logprob (n,), response length (n,)) of each of the ``n`` sequences in ``tokens``,
    in the order they were collated: padded, packed (``row_sums``) or prefix-shared."""
    logprobs, _ = token_logprobs(model, tokens, chunk=chunk)
    return row_sums(logprobs, tokens, n), row_sums(tokens.response_mask, tokens, n)  # the 0/1 mask squared is itself


def _forward_inputs(batch: TokenBatch) -> dict[str, torch.Tensor]:
    if batch.position_ids is not None:
        return {"input_ids": batch.input_ids, "position_ids": batch.position_ids}
    return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}


# ---------------------------------------------------------------------------------------------
# the chunked path


@dataclass(frozen=True)
class OutputHead:
    """How a causal LM turns final hidden states into logits: ``transform(linear(h))``.

    ``scale`` multiplies the logits (Cohere's ``logit_scale``), ``divide`` divides them
    (Granite's ``logits_scaling``), ``softcap`` c maps z to ``tanh(z / c) * c`` (Gemma's
    ``final_logit_softcapping``), in that order, each written as the model writes it
    so that the chunked logits are the model's to the last bit where the matmul is.
    """

    module: torch.nn.Module  # the head, lm_head (tied to the input embedding or not)
    decoder: torch.nn.Module  # the module whose output is the final hidden states
    scale: float | None = None
    divide: float | None = None
    softcap: float | None = None

    @property
    def plain_linear(self) -> bool:
        """A bare ``nn.Linear``: the recomputing Function can use its weight directly."""
        return type(self.module) is torch.nn.Linear


def unwrap(model: Any) -> Any:
    """The Hugging Face model inside DDP, peft and the LoRA reference view (``BaseView``)."""
    seen: set[int] = set()
    while id(model) not in seen:
        seen.add(id(model))
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif callable(getattr(model, "get_base_model", None)):  # peft
            model = model.get_base_model()
        elif not isinstance(model, torch.nn.Module) and hasattr(model, "model"):  # BaseView
            model = model.model
    return model


def output_head(model: Any) -> OutputHead:
    """The head, the decoder and the logit transform of ``model``; ModelError when there is none."""
    hf = unwrap(model)
    get_head, get_decoder = getattr(hf, "get_output_embeddings", None), getattr(hf, "get_decoder", None)
    head = get_head() if callable(get_head) else None
    try:
        decoder = get_decoder() if callable(get_decoder) else None
    except (AttributeError, ValueError, NotImplementedError):
        decoder = None
    if not isinstance(head, torch.nn.Module) or not isinstance(decoder, torch.nn.Module):
        raise ModelError(f"{type(hf).__name__} has no output head and decoder to chunk; set it to 0", field=CHUNK_FIELD)
    cfg = getattr(hf, "config", None)
    scale = getattr(hf, "logit_scale", None) if getattr(cfg, "model_type", "").startswith("cohere") else None
    return OutputHead(
        module=head,
        decoder=decoder,
        scale=float(scale) if isinstance(scale, (int, float)) else None,
        divide=getattr(cfg, "logits_scaling", None) if getattr(cfg, "model_type", "").startswith("granite") else None,
        softcap=getattr(cfg, "final_logit_softcapping", None) or None,
    )


def transform(head: OutputHead, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """The model's own post-head logit transform (``OutputHead``), in the model's order.

    ``inplace`` overwrites ``x`` (same values, bit for bit): the chunked path's buffers.
    """
    if not inplace:
        x = x.clone() if (head.scale, head.divide, head.softcap) != (None, None, None) else x
    if head.scale is not None:
        x.mul_(head.scale)
    if head.divide is not None:
        x.div_(head.divide)
    if head.softcap is not None:
        x.div_(head.softcap).tanh_().mul_(head.softcap)
    return x


def transform_grad(head: OutputHead, y: torch.Tensor) -> float | torch.Tensor:
    """d transform / dx, written in terms of its output ``y`` (so x need not be kept)."""
    d: float | torch.Tensor = 1.0
    if head.scale is not None:
        d = head.scale
    if head.divide is not None:
        d = d / head.divide
    if head.softcap is not None:
        d = (y / head.softcap).square_().neg_().add_(1).mul_(d)  # tanh' = 1 - tanh^2, and y = c tanh(.)
    return d


_CHECKED: weakref.WeakSet[Any] = weakref.WeakSet()


@contextlib.contextmanager
def head_as_called(model: Any) -> Iterator[None]:
    """Run the head as ``model``'s own forward runs it: adapters off for the LoRA reference view.

    ``BaseView`` turns the policy's adapters off only inside its call; the chunked head
    runs after that call, so a LoRA layer on the head must be turned off again here
    (after, not nested: peft's ``disable_adapter`` re-enables adapters on exit).
    The reference runs without gradient, so its backward never needs this.
    """
    peft_model = getattr(model, "model", None)
    if isinstance(model, torch.nn.Module) or not callable(getattr(peft_model, "disable_adapter", None)):
        yield
        return
    with peft_model.disable_adapter():  # type: ignore[union-attr]
        yield


def final_hidden(model: Any, inputs: dict[str, torch.Tensor], head: OutputHead) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, H) final hidden states, and the model's own (B, V) logits of the last position.

    The forward goes through ``model`` itself (so DDP, FSDP and peft hooks run) with
    ``logits_to_keep=1``: the model computes its head on one position per row. The
    hidden states are caught by a hook on the decoder.
    """
    caught: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, _args: Any, output: Any) -> None:
        caught.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    handle = head.decoder.register_forward_hook(hook)
    try:
        out = model(**inputs, use_cache=False, logits_to_keep=1)
    except TypeError as e:
        raise ModelError(f"{type(unwrap(model)).__name__}'s forward takes no logits_to_keep ({e}); set it to 0",
                         field=CHUNK_FIELD) from None  # fmt: skip
    finally:
        handle.remove()
    if not caught or caught[-1].shape[:2] != inputs["input_ids"].shape:
        raise ModelError("the decoder's output is not (batch, tokens, hidden); set it to 0", field=CHUNK_FIELD)
    return caught[-1], out.logits[:, -1]


def check_head(model: Any, head: OutputHead, hidden: torch.Tensor, logits: torch.Tensor) -> None:
    """Once per model (or wrapper): the chunked logits of the last positions equal the model's own.

    ``hidden`` (B, H) and ``logits`` (B, V) of the last position. A mismatch means
    the architecture does more after its head than ``OutputHead`` knows.
    """
    if model in _CHECKED:
        return
    with torch.no_grad():
        mine = transform(head, head.module(hidden)).float()
        ref = logits.float()
        gap = float((mine - ref).abs().max()) if ref.numel() else 0.0
        bound = 1e-2 * (1.0 + float(ref.abs().max())) if ref.numel() else 0.0
    if not gap <= bound:
        name = type(unwrap(model)).__name__
        raise ModelError(f"{name}'s logits are not its head of the final hidden states (max gap {gap:.3g}); set it to 0",
                         field=CHUNK_FIELD)  # fmt: skip
    _CHECKED.add(model)


def chunked_token_logprobs(
    model: Any,
    batch: TokenBatch,
    temperature: float,
    with_entropy: bool,
    entropy_grad: bool,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``token_logprobs`` through the chunked head: (B, T-1) logprobs, 0 outside ``response_mask``."""
    with checked_head(model, _forward_inputs(batch)) as (head, hidden):
        return _head_logprobs(hidden, head, batch, temperature, with_entropy, entropy_grad, chunk)


@contextlib.contextmanager
def checked_head(model: Any, inputs: dict[str, torch.Tensor]) -> Iterator[tuple[OutputHead, torch.Tensor]]:
    """The forward of ``inputs`` to the final hidden states, and the head to run over them (checked once
    against the model's own logits), inside ``head_as_called``: the chunked path's preamble."""
    head = output_head(model)
    hidden, last_logits = final_hidden(model, inputs, head)
    with head_as_called(model):
        check_head(model, head, hidden[:, -1], last_logits)
        yield head, hidden


def _shared_token_logprobs(
    model: Any,
    batch: TokenBatch,
    temperature: float,
    with_entropy: bool,
    entropy_grad: bool,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``token_logprobs`` of a batch with prefix-shared rows (``posttrain.data.prefix``): the forward runs
    the shared rows, each read comes from the position that predicts it, and the values land at the
    padded layout's (B, T-1) columns, 0 outside ``response_mask``."""
    sh = batch.shared
    assert sh is not None
    t = temperature if temperature not in (0.0, 1.0) else None
    inputs = sh.forward_inputs()
    ent: torch.Tensor | None = None
    if chunk <= 0:
        logits = model(**inputs, use_cache=False).logits[sh.rows, sh.cols]
        logits = logits / t if t is not None else logits
        lp = gather_logprobs(logits, sh.targets)
        ent = entropy_from_logits(logits, grad=entropy_grad) if with_entropy else None
    else:
        with checked_head(model, inputs) as (head, hidden):
            P, W, H = hidden.shape
            flat = hidden.reshape(P * W, H).index_select(0, sh.rows * W + sh.cols)
            lp, ent = _head_at(flat, head, sh.targets, t, chunk, with_entropy)
        if ent is not None and not (entropy_grad and torch.is_grad_enabled()):
            ent = ent.detach()
    rows, col = (batch.response_mask.to(lp.device) > 0).nonzero(as_tuple=True)  # the order share() read them in
    if len(rows) != len(lp):
        raise ValueError(f"{len(lp)} shared reads for {len(rows)} response tokens: share() the batch after masking")
    shape = (batch.response_mask.shape[0], batch.response_mask.shape[1])
    return _scatter(lp, rows, col, shape), None if ent is None else _scatter(ent, rows, col, shape)


def _head_logprobs(
    hidden: torch.Tensor,
    head: OutputHead,
    batch: TokenBatch,
    temperature: float,
    with_entropy: bool,
    entropy_grad: bool,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The chunked head over the final hidden states (B, T, H) at the response positions."""
    B, T, H = hidden.shape
    cols = batch.response_mask.shape[1]
    mask = batch.response_mask.to(hidden.device) > 0
    rows, col = mask.nonzero(as_tuple=True)
    flat = hidden.reshape(B * T, H).index_select(0, rows * T + col)  # the predicting positions that are read
    targets = batch.input_ids[rows, col + 1]
    t = temperature if temperature not in (0.0, 1.0) else None
    lp, ent = _head_at(flat, head, targets, t, chunk, with_entropy)
    logprobs = _scatter(lp, rows, col, (B, cols))
    if ent is None:
        return logprobs, None
    return logprobs, _scatter(ent if entropy_grad and torch.is_grad_enabled() else ent.detach(), rows, col, (B, cols))


def _head_at(
    flat: torch.Tensor, head: OutputHead, targets: torch.Tensor, t: float | None, chunk: int, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logprob of each target, entropy or None) from hidden rows ``flat`` (N, H), ``chunk`` rows a block."""
    if head.plain_linear:
        linear: Any = head.module
        lp, ent = _ChunkedHeadLogprobs.apply(flat, linear.weight, linear.bias, targets, head, t, chunk, with_entropy)
    else:  # a wrapped head (e.g. LoRA on lm_head): recompute each chunk by checkpointing
        lp, ent = _checkpointed_logprobs(flat, head, targets, t, chunk, with_entropy)
    return lp, ent


def _scatter(values: torch.Tensor, rows: torch.Tensor, col: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(N,) values at (rows, col) of a (B, T-1) zero tensor, differentiably."""
    out = values.new_zeros(shape[0] * shape[1])
    return out.index_put((rows * shape[1] + col,), values).view(shape)


def _chunk_stats(
    z: torch.Tensor, targets: torch.Tensor, with_entropy: bool, inplace: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(logprob of target, logsumexp, entropy) of each row of fp32 logits z (n, V).

    The same operations as ``gather_logprobs`` and ``entropy_from_logits``, so the same
    values bit for bit; ``inplace`` multiplies into the softmax's buffer (no graph).
    """
    lse = z.logsumexp(-1)
    lp = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    ent = None
    if with_entropy:
        p = z.softmax(-1)
        ent = lse - (p.mul_(z) if inplace else p * z).sum(-1)
    return lp, lse, ent


def _logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """The head's logits of hidden rows h in the matmul dtype (autocast's, or the weights'), as fp32.

    ``weight`` is already in that dtype.
    """
    b = None if bias is None else bias.to(dtype)
    return torch.nn.functional.linear(h.to(dtype), weight, b).float()


def _scaled(head: OutputHead, x: torch.Tensor, temperature: float | None, inplace: bool = True) -> torch.Tensor:
    """The transformed logits over the temperature; ``inplace`` writes over ``x`` (a fresh fp32 buffer)."""
    y = transform(head, x, inplace=inplace)
    if temperature is None:
        return y
    return y.div_(temperature) if inplace else y / temperature


def _matmul_dtype(h: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """What ``nn.Linear`` would compute in here: autocast's dtype when it is on, else the weights'."""
    kind = h.device.type
    if torch.is_autocast_enabled(kind) and weight.dtype == torch.float32:
        return torch.get_autocast_dtype(kind)
    return weight.dtype


class _ChunkedHeadLogprobs(torch.autograd.Function):
    """(n, H) hidden rows -> (n,) logprobs of targets and (n,) entropies, one chunk of logits at a time.

    Saves the hidden rows, the weights and each row's logsumexp and entropy; backward
    recomputes a chunk's logits z and uses, with p = softmax(z) and 1_y the target:

        d logprob / dz = 1_y - p          d entropy / dz = -p * (log p + entropy)

    then the transform's and temperature's derivative, and ``dz @ W`` for the hidden
    rows and ``dz^T @ h`` added in place into the head's gradient. Backward works in
    place over two (n, V) buffers (three with a soft cap).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        h: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        head: OutputHead,
        temperature: float | None,
        chunk: int,
        with_entropy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = _matmul_dtype(h, weight)
        w = weight.to(dtype)  # once, not per chunk (a no-op without autocast)
        lps, lses, ents = [], [], []
        for s in range(0, h.shape[0], chunk):
            z = _scaled(head, _logits(h[s : s + chunk], w, bias, dtype), temperature)
            lp, lse, ent = _chunk_stats(z, targets[s : s + chunk], with_entropy)
            del z
            lps.append(lp)
            lses.append(lse)
            if ent is not None:
                ents.append(ent)
        lp_all = torch.cat(lps) if lps else h.new_zeros(0, dtype=torch.float32)
        lse_all = torch.cat(lses) if lses else lp_all
        ent_all = torch.cat(ents) if ents else torch.zeros_like(lp_all)
        ctx.save_for_backward(h, weight, bias, targets, lse_all, ent_all)
        ctx.head, ctx.temperature, ctx.chunk, ctx.dtype = head, temperature, chunk, dtype
        ctx.set_materialize_grads(False)
        return lp_all, ent_all

    @staticmethod
    def backward(ctx: Any, g_lp: torch.Tensor | None, g_ent: torch.Tensor | None) -> tuple[Any, ...]:
        h, weight, bias, targets, lse_all, ent_all = ctx.saved_tensors
        head, temperature, chunk, dtype = ctx.head, ctx.temperature, ctx.chunk, ctx.dtype
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        g_h = torch.empty_like(h) if want_h else None
        g_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        g_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if want_b else None
        w = weight.to(dtype)
        for s in range(0, h.shape[0], chunk):
            e = s + chunk
            h_c = h[s:e].to(dtype)
            z = transform(head, _logits(h_c, w, bias, dtype), inplace=True)
            d = transform_grad(head, z)  # before z is overwritten: the soft cap's derivative reads y
            if temperature is not None:
                z.div_(temperature)
            g_z = _dz_(z, targets[s:e], lse_all[s:e], ent_all[s:e], _part(g_lp, s, e), _part(g_ent, s, e))
            if temperature is not None:
                g_z.div_(temperature)
            g_z.mul_(d)
            del d
            g_mm = g_z.to(dtype)
            if g_h is not None:
                g_h[s:e] = g_mm @ w
            if g_w is not None:
                if dtype == torch.float32:
                    g_w.addmm_(g_mm.t(), h_c)  # in place: no (V, H) temporary per chunk
                else:
                    g_w += (g_mm.t() @ h_c).float()
            if g_b is not None:
                g_b += g_z.sum(0)
            del z, g_z, g_mm
        cast_w = None if g_w is None else g_w.to(weight.dtype)
        cast_b = None if g_b is None else g_b.to(bias.dtype)
        return g_h, cast_w, cast_b, None, None, None, None, None


def _part(g: torch.Tensor | None, s: int, e: int) -> torch.Tensor | None:
    return None if g is None else g[s:e].unsqueeze(-1)


def _dz_(
    z: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    ent: torch.Tensor,
    g_lp: torch.Tensor | None,
    g_ent: torch.Tensor | None,
) -> torch.Tensor:
    """The gradient (n, V) of the chunk's logprob and entropy terms with respect to its logits z.

    Overwrites z (n, V) with the result, using one more (n, V) buffer for p:

        dz = -p * (g_lp + g_ent * (log p + H)),  plus g_lp at each row's target.
    """
    logp = z.sub_(lse.unsqueeze(-1))
    p = logp.exp()
    if g_ent is not None:
        acc = logp.add_(ent.unsqueeze(-1)).mul_(g_ent)
        if g_lp is not None:
            acc.add_(g_lp)
    else:
        assert g_lp is not None  # backward runs because some output has a gradient
        acc = logp.copy_(g_lp.expand_as(logp))
    g = acc.mul_(p).neg_()
    del p
    if g_lp is not None:
        g.scatter_add_(-1, targets.unsqueeze(-1), g_lp)
    return g


def _checkpointed_logprobs(
    h: torch.Tensor, head: OutputHead, targets: torch.Tensor, temperature: float | None, chunk: int, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same per-chunk values through the head module itself, each chunk recomputed in backward."""
    from torch.utils.checkpoint import checkpoint

    def one(h_c: torch.Tensor, t_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lp, _, ent = _chunk_stats(_scaled(head, head.module(h_c).float(), temperature, False), t_c, with_entropy, False)
        return lp, ent if ent is not None else torch.zeros_like(lp)

    pieces = zip(h.split(chunk), targets.split(chunk)) if len(h) else [(h, targets)]  # empty: still a graph
    parts = [checkpoint(one, h_c, t_c, use_reentrant=False) for h_c, t_c in pieces]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def teacher_logits(teacher: torch.nn.Module, batch: TokenBatch, temperature: float) -> torch.Tensor:
    """(B, T-1, V) the teacher's next-token logits over ``batch``, divided by ``temperature``; no gradient."""
    with torch.no_grad():
        if batch.position_ids is not None:
            out = teacher(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False)
        else:
            out = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        logits = out.logits[:, :-1].float()
    return logits / temperature if temperature not in (0.0, 1.0) else logits
