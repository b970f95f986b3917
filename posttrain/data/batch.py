"""Turning (prompt, completion) token lists into padded training tensors.

SFT demonstrations and GRPO rollouts are the same shape of data: a prompt whose
tokens are context only and a completion whose tokens are scored. Both go
through ``collate``; the math downstream reads ``response_mask`` and never
needs to know where the rows came from.

Shapes: ``input_ids`` and ``attention_mask`` are (B, T); everything aligned to
predicted tokens (``response_mask``, logprobs, advantages) is (B, T-1), where
column t is the prediction of ``input_ids[:, t+1]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # (B, T) right-padded
    attention_mask: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T-1) float: 1 where the target is a completion token
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # per-token (B, T-1) or per-row (B,)

    def to(self, device: torch.device) -> TokenBatch:
        if self.input_ids.device == device:
            return self
        return TokenBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.response_mask.to(device),
            {k: v.to(device) for k, v in self.extra.items()},
        )

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def select(self, rows: list[int] | torch.Tensor) -> TokenBatch:
        idx = torch.as_tensor(rows, dtype=torch.long)
        width = int(self.attention_mask[idx].sum(-1).max()) if len(idx) else 1
        width = max(width, 2)
        return TokenBatch(
            input_ids=self.input_ids[idx, :width],
            attention_mask=self.attention_mask[idx, :width],
            response_mask=self.response_mask[idx, : width - 1],
            extra={k: (v[idx, : width - 1] if v.dim() == 2 else v[idx]) for k, v in self.extra.items()},
        )


def collate(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> TokenBatch:
    B = len(prompts)
    T = max(max(len(p) + len(c) for p, c in zip(prompts, completions)), 2)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention = torch.zeros((B, T), dtype=torch.long)
    response = torch.zeros((B, T - 1))
    for i, (p, c) in enumerate(zip(prompts, completions)):
        n = len(p) + len(c)
        input_ids[i, :n] = torch.tensor(p + c, dtype=torch.long)
        attention[i, :n] = 1
        response[i, len(p) - 1 : n - 1] = 1.0
    return TokenBatch(input_ids, attention, response)


def per_token(values: list[list[float]], prompt_lens: list[int], width: int) -> torch.Tensor:
    """Place per-completion-token values at their (B, T-1) prediction columns."""
    out = torch.zeros((len(values), width))
    for i, (v, p) in enumerate(zip(values, prompt_lens)):
        if v:
            out[i, p - 1 : p - 1 + len(v)] = torch.tensor(v, dtype=out.dtype)
    return out


def length_buckets(lengths: list[int], order: list[int], micro_batch_size: int) -> list[list[int]]:
    """Split ``order`` (one optimiser step's rows) into micro-batches of similar length.

    Sorting within the step keeps the step's data identical (so the loss and the
    resume point do not depend on bucketing) while padding shrinks to the length
    spread inside each micro-batch.
    """
    rows = sorted(order, key=lambda i: lengths[i])
    return [rows[s : s + micro_batch_size] for s in range(0, len(rows), micro_batch_size)]
