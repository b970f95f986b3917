"""A batched sampler with a KV cache, in plain PyTorch over any HF causal LM.

Prompts are left-padded so that every row's next token sits in the last column;
each decode step feeds one token per row and reuses the model's key/value cache.
Position ids are counted from each row's first real token, so a padded row sees
exactly the positions it would see alone, and its logprobs match a full forward
pass over the unpadded sequence (tested).

The per-step model call is a ``Decoder``: a static-cache fast path for the Llama
family, the model's own forward for everything else (``posttrain.rollout.decoders``).

Logprobs are those of ``softmax(logits / temperature)`` before top-k/top-p
truncation: the distribution the trainer recomputes for the importance ratio.
Truncation only changes which tokens can be drawn.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from posttrain.rollout.base import TORCH_ENGINE, Completion, EngineCapabilities, SamplingParams, stop_token_ids
from posttrain.rollout.decoders import Decoder, HFDecoder, StaticLlamaDecoder, supports_static_decode


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
SAMPLER_VERSION = 2


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
        probs = _filter_logits(logits, sampling.top_k, sampling.top_p).softmax(-1)
        token = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
    return token, step_logprobs.gather(-1, token[:, None]).squeeze(-1)


class TorchEngine:
    """Generates from ``model`` in place: the trainer's own module, or a copy it syncs."""

    capabilities: EngineCapabilities = TORCH_ENGINE

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 256, fast: bool = True
    ) -> None:
        self.model = model
        self.fast = fast and supports_static_decode(model)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eos_id = int(tokenizer.eos_token_id)  # type: ignore[arg-type]
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id)
        self.stop_ids = stop_token_ids(self.eos_id, getattr(model, "generation_config", None))

    def sync_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state_dict, strict=False)

    def close(self) -> None:
        """Nothing to release: the engine runs in this process."""

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        gen = None
        if sampling.seed is not None:
            gen = torch.Generator(device=self.model.device).manual_seed(sampling.seed)
        out: list[Completion] = []
        for start in range(0, len(prompts), self.batch_size):
            out.extend(self._generate_batch(prompts[start : start + self.batch_size], sampling, gen))
        return out

    @torch.no_grad()
    def _generate_batch(
        self, prompts: list[list[int]], sampling: SamplingParams, gen: torch.Generator | None
    ) -> list[Completion]:
        model, device = self.model, self.model.device
        was_training = model.training
        model.eval()
        B, L = len(prompts), max(len(p) for p in prompts)
        input_ids = torch.full((B, L), self.pad_id, dtype=torch.long, device=device)
        attention = torch.zeros((B, L), dtype=torch.long, device=device)
        for i, p in enumerate(prompts):
            input_ids[i, L - len(p) :] = torch.tensor(p, dtype=torch.long)
            attention[i, L - len(p) :] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        stop = torch.tensor(sorted(self.stop_ids), device=device)

        T = sampling.max_new_tokens
        tokens = torch.full((B, T), self.pad_id, dtype=torch.long, device=device)
        logprobs = torch.zeros((B, T), device=device)
        lengths = torch.full((B,), T, dtype=torch.long, device=device)
        stopped = torch.zeros(B, dtype=torch.bool, device=device)
        decoder: Decoder = StaticLlamaDecoder(model, L + T) if self.fast else HFDecoder(model)
        logits = decoder.prefill(input_ids, attention, positions)
        next_pos = positions[:, -1:] + 1
        rows = torch.arange(B, device=device)  # the batch row of each row still being decoded
        running = torch.ones(B, dtype=torch.bool, device=device)
        for t in range(T):
            token, token_logprob = _sample(logits, sampling, gen)
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
        return self._records(prompts, tokens.tolist(), logprobs.tolist(), lengths.tolist(), stopped.tolist())

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
