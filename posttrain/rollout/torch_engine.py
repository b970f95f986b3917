"""A batched sampler with a KV cache, in plain PyTorch over any HF causal LM.

Prompts are left-padded so that every row's next token sits in the last column;
each decode step feeds one token per row and reuses the model's key/value cache.
A prompt that comes several times in a batch (GRPO's samples of one prompt) is
prefilled once and its cache copied to each of its rows.
Position ids are counted from each row's first real token, so a padded row sees
exactly the positions it would see alone, and its logprobs match a full forward
pass over the unpadded sequence (tested).

The per-step model call is a ``Decoder``: a static-cache fast path for the Llama
family, the model's own forward for everything else (``posttrain.rollout.decoders``).

Logprobs are those of ``softmax(logits / temperature)`` before top-k/top-p
truncation: the distribution the trainer recomputes for the importance ratio.
Truncation only changes which tokens can be drawn.

Adaptive decoding (``SamplingParams.adaptive``): the engine's temperature head
(``posttrain.models.temperature_head``) picks each row's temperature, once from the
prompt's last hidden state or at every step, and each pick is recorded in the
completion (``Completion.temperature_choices``). A row at temperature 0 is exactly
greedy; the picks are drawn with a generator of their own, so rows that all get
temperature T draw exactly the tokens a fixed-temperature T call draws with the same seed.

Sampling dtype (``engine.dtype``): ``bfloat16`` samples from a bf16 copy of
``model``, refreshed from it at every ``generate`` call (one cast copy of the
weights), while ``model`` itself, the trainer's, stays fp32. Its logprobs then
differ from the trainer's by bf16 rounding (tested to a stated tolerance), so GRPO
takes ``old_logprobs`` from the trainer: from its update's own forward when a batch
makes one optimiser step, else recomputed before the steps
(``posttrain.recipes.grpo.recompute_old_logprobs``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from posttrain.errors import RolloutError
from posttrain.rollout.base import TORCH_ENGINE, Completion, EngineCapabilities, SamplingParams, stop_token_ids
from posttrain.rollout.decoders import (
    Decoder,
    HFDecoder,
    PackedLinears,
    StaticLlamaDecoder,
    packing_supported,
    supports_static_decode,
)
from posttrain.seeds import derive_seed


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask logits outside the top-k set and the top-p nucleus. logits: (B, V)."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p; the first always stays
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


# Finished rows are dropped from the batch once no more than this share of it is still
# running: each drop copies the KV cache once, so it is worth it only when it removes many.
COMPACT_AT = 0.75
# Bumped when the same seed starts giving different samples (cached evaluation samples are keyed by it).
# 3: tokens drawn by inverse CDF (``_draw``) instead of torch.multinomial.
SAMPLER_VERSION = 3


def _draw(probs: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """One token per row of ``probs`` (B, V), by inverse CDF: one uniform draw a row.

    ``torch.multinomial`` draws one exponential variate per vocabulary entry (B x V
    of them; at 64 x 49,152 on a 2-core CPU that is 70 ms, a quarter of a 135M model's
    decode step); the cumulative sum costs about 1.5 ms there. The uniform is scaled by
    each row's computed total, so the sum's float32 rounding (about 1e-7 of the running
    mass) shifts the interval edges only by that much; a token of probability 0
    (masked by top-k or top-p) is never drawn: its interval is empty.
    """
    cdf = probs.cumsum(-1)
    total = cdf[:, -1:]
    if not bool(torch.isfinite(total).all() and (total > 0).all()):
        raise RolloutError("the next-token probabilities are not finite: the model's weights or logits hold NaN or inf")
    u = torch.rand(total.shape, generator=gen, device=probs.device, dtype=cdf.dtype) * total
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def _sample(
    logits: torch.Tensor, sampling: SamplingParams, gen: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The next token of each row and its logprob under softmax(logits / T), before truncation."""
    logits = logits.float()
    if sampling.temperature > 0:
        logits = logits / sampling.temperature
    step_logprobs = logits.log_softmax(-1)
    if sampling.temperature == 0:
        token = logits.argmax(-1)
    else:
        token = _draw(_filter_logits(logits, sampling.top_k, sampling.top_p).softmax(-1), gen)
    return token, step_logprobs.gather(-1, token[:, None]).squeeze(-1)


def _sample_rows(
    logits: torch.Tensor, temperatures: torch.Tensor, sampling: SamplingParams, gen: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``_sample`` with one temperature per row, ``temperatures`` (B,): a row at 0 takes the argmax."""
    logits = logits.float()
    greedy = temperatures == 0
    logits = logits / torch.where(greedy, torch.ones_like(temperatures), temperatures)[:, None]
    step_logprobs = logits.log_softmax(-1)
    token = logits.argmax(-1)
    if not bool(greedy.all()):
        drawn = _draw(_filter_logits(logits, sampling.top_k, sampling.top_p).softmax(-1), gen)
        token = torch.where(greedy, token, drawn)
    return token, step_logprobs.gather(-1, token[:, None]).squeeze(-1)


class _HeadPicks:
    """A temperature head's picks over one batch: ``choices`` (B, T), per step or held from the prefill."""

    def __init__(self, head: Any, sampling: SamplingParams, B: int, T: int, gen: torch.Generator | None):
        self.head, self.greedy, self.gen = head, sampling.adaptive == "argmax", gen
        self.choices = torch.zeros((B, T), dtype=torch.long, device=head.values.device)
        self.per_row: torch.Tensor | None = None  # a per-example head's pick of each row, from the prefill

    def temperatures(self, hidden: torch.Tensor | None, rows: torch.Tensor, t: int) -> torch.Tensor:
        """(len(rows),) temperatures for step ``t`` of the rows still decoding; ``hidden`` is theirs."""
        assert hidden is not None  # the decoder keeps it when a head is in use
        if self.head.level == "example":
            if self.per_row is None:  # step 0: hidden is the prefill's, the prompts' last positions
                self.per_row = self.head.choose(hidden, self.greedy, self.gen)
            idx = self.per_row[rows.to(self.per_row.device)]
        else:
            idx = self.head.choose(hidden, self.greedy, self.gen)
        self.choices[rows.to(idx.device), t] = idx
        return self.head.temperatures_of(idx).to(hidden.device)

    def of_row(self, i: int, n: int) -> list[int]:
        return [int(self.choices[i, 0])] if self.head.level == "example" else self.choices[i, :n].tolist()


class TorchEngine:
    """Generates from ``model`` in place: the trainer's own module, or a copy it syncs."""

    capabilities: EngineCapabilities = TORCH_ENGINE

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 256, fast: bool = True,
        head: Any = None, dtype: str = "auto", packed_linears: bool = False,
    ) -> None:  # fmt: skip
        """``packed_linears``: on a CPU, the fast decoder runs its linear layers through oneDNN on packed
        weights (``posttrain.rollout.decoders.PackedLinears``); elsewhere, and off the fast path, ignored."""
        self.model = model
        # "auto": sample from model itself; a dtype other than model's: from a copy in that dtype
        self.sample_dtype = None if dtype == "auto" else getattr(torch, dtype)
        if self.sample_dtype == next(model.parameters()).dtype:
            self.sample_dtype = None
        self._copy: Any = None
        self.head = head  # a TemperatureHead, used by calls with sampling.adaptive set
        self.fast = fast and supports_static_decode(model)
        self.packed = packed_linears and self.fast
        self._linears = PackedLinears()  # kept across calls: a weight is packed again only once it changed
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.on_batch: Callable[[int], None] | None = None  # told each batch's rows: a progress display's advance
        self.eos_id = int(tokenizer.eos_token_id)  # type: ignore[arg-type]
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id)
        self.stop_ids = stop_token_ids(self.eos_id, getattr(model, "generation_config", None))

    def sync_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state_dict, strict=False)

    def close(self) -> None:
        """Nothing to release: the engine runs in this process."""

    @torch.no_grad()
    def sampling_model(self) -> Any:
        """What draws the tokens: ``model``, or its copy in ``sample_dtype`` holding its current weights."""
        if self.sample_dtype is None:
            return self.model
        if self._copy is None:
            self._copy = copy.deepcopy(self.model).to(self.sample_dtype).requires_grad_(False)
            for p in self._copy.parameters():
                p.grad = None
        else:
            mine = self._copy.state_dict()
            for k, v in self.model.state_dict().items():
                mine[k].copy_(v)
        return self._copy

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        """Completions of ``prompts``, ``batch_size`` at a time; ``on_batch(rows)`` after each batch when set."""
        gen = None
        if sampling.seed is not None:
            gen = torch.Generator(device=self.model.device).manual_seed(sampling.seed)
        head_gen = None
        if sampling.adaptive != "off":
            if self.head is None:
                raise RolloutError("adaptive sampling needs a temperature head on the engine (TorchEngine(head=...))")
            if sampling.seed is not None:  # its own stream: the tokens' draws stay those of a fixed temperature
                head_gen = torch.Generator(device=self.head.values.device).manual_seed(derive_seed(sampling.seed, 17))
        out: list[Completion] = []
        for start in range(0, len(prompts), self.batch_size):
            out.extend(self._generate_batch(prompts[start : start + self.batch_size], sampling, gen, head_gen))
            if self.on_batch is not None:
                self.on_batch(len(prompts[start : start + self.batch_size]))
        return out

    @torch.no_grad()
    def _generate_batch(
        self, prompts: list[list[int]], sampling: SamplingParams, gen: torch.Generator | None,
        head_gen: torch.Generator | None = None,
    ) -> list[Completion]:  # fmt: skip
        model, device = self.sampling_model(), self.model.device
        was_training = model.training
        model.eval()
        B, L = len(prompts), max(len(p) for p in prompts)
        # a prompt repeated in the batch (GRPO's G samples of one prompt) is prefilled once, its cache then copied
        first: dict[tuple[int, ...], int] = {}
        copy_of = torch.tensor([first.setdefault(tuple(p), len(first)) for p in prompts], device=device)
        distinct = [list(p) for p in first]
        input_ids = torch.full((len(distinct), L), self.pad_id, dtype=torch.long, device=device)
        attention = torch.zeros((len(distinct), L), dtype=torch.long, device=device)
        for i, p in enumerate(distinct):
            input_ids[i, L - len(p) :] = torch.tensor(p, dtype=torch.long)
            attention[i, L - len(p) :] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        stop = torch.tensor(sorted(self.stop_ids), device=device)

        T = sampling.max_new_tokens
        tokens = torch.full((B, T), self.pad_id, dtype=torch.long, device=device)
        logprobs = torch.zeros((B, T), device=device)
        lengths = torch.full((B,), T, dtype=torch.long, device=device)
        stopped = torch.zeros(B, dtype=torch.bool, device=device)
        picks = _HeadPicks(self.head, sampling, B, T, head_gen) if sampling.adaptive != "off" else None
        hidden = picks is not None  # the head reads each step's last hidden state
        decoder: Decoder
        if self.fast:
            weights = next(model.parameters())
            linears = self._linears if self.packed and packing_supported(weights.device, weights.dtype) else None
            decoder = StaticLlamaDecoder(model, L + T, hidden, linears)
        else:
            decoder = HFDecoder(model, hidden)
        logits = decoder.prefill(input_ids, attention, positions)
        if len(distinct) < B:
            decoder.select(copy_of)
            logits, attention, positions = logits[copy_of], attention[copy_of], positions[copy_of]
            if decoder.hidden is not None:
                decoder.hidden = decoder.hidden[copy_of]
        next_pos = positions[:, -1:] + 1
        rows = torch.arange(B, device=device)  # the batch row of each row still being decoded
        running = torch.ones(B, dtype=torch.bool, device=device)
        for t in range(T):
            if picks is None:
                token, token_logprob = _sample(logits, sampling, gen)
            else:
                token, token_logprob = _sample_rows(logits, picks.temperatures(decoder.hidden, rows, t), sampling, gen)
            token = token.masked_fill(~running, self.pad_id)
            tokens[rows, t] = token
            logprobs[rows, t] = token_logprob.masked_fill(~running, 0.0)
            finished_now = running & torch.isin(token, stop)
            lengths[rows] = torch.where(finished_now, t + 1, lengths[rows])
            stopped[rows] |= finished_now
            running &= ~finished_now
            still = int(running.sum())
            if still == 0 or t + 1 == T:
                break
            if still <= COMPACT_AT * len(rows):  # drop finished rows instead of decoding padding for them
                keep = running.nonzero().squeeze(1)
                decoder.select(keep)
                rows, running, token = rows[keep], running[keep], token[keep]
                attention, next_pos = attention[keep], next_pos[keep]
            attention = torch.cat([attention, running.long()[:, None]], dim=1)
            logits = decoder.step(token[:, None], attention, next_pos)
            next_pos = next_pos + 1
        model.train(was_training)
        out = self._records(prompts, tokens.tolist(), logprobs.tolist(), lengths.tolist(), stopped.tolist())
        if picks is not None:
            for i, c in enumerate(out):
                c.temperature_choices = picks.of_row(i, len(c.completion_ids))
        return out

    def _records(
        self,
        prompts: list[list[int]],
        tokens: list[list[int]],
        logprobs: list[list[float]],
        lengths: list[int],
        done: list[bool],
    ) -> list[Completion]:
        out = []
        for p, toks, lps, n, stopped in zip(prompts, tokens, logprobs, lengths, done):
            ids = toks[:n]
            out.append(
                Completion(
                    prompt_ids=list(p),
                    completion_ids=ids,
                    logprobs=lps[:n],
                    finish_reason="stop" if stopped else "length",
                    text=str(self.tokenizer.decode(ids, skip_special_tokens=True)),
                )
            )
        return out
