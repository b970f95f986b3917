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

from dataclasses import dataclass, field, fields

import torch


@dataclass
class SharedRows:
    """Rows of prefix-shared groups, and where each sequence's response tokens are read (``posttrain.data.prefix``)."""

    input_ids: torch.Tensor  # (P, W) long, 0 past each row's end
    attention_mask: torch.Tensor  # (P, 1, W, W) bool: query column attends to key column
    position_ids: torch.Tensor  # (P, W) long
    rows: torch.Tensor  # (N,) long: the row of each read, N = all sequences' response tokens
    cols: torch.Tensor  # (N,) long: the column whose hidden state predicts the read token
    targets: torch.Tensor  # (N,) long: the token it predicts
    sequence: torch.Tensor  # (N,) long: the sequence (index into the list given) each read belongs to

    def to(self, device: torch.device) -> SharedRows:
        if self.input_ids.device == device:
            return self
        return SharedRows(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def forward_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # (B, T) right-padded
    attention_mask: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T-1) float: 1 where the target is a completion token
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # per-token (B, T-1) or per-row (B,)
    # set by ``pack``: several sequences per row, positions restarting at 0 at each one
    position_ids: torch.Tensor | None = None
    # set by ``posttrain.data.prefix.share``: the rows the forward runs instead, prompts computed once
    shared: SharedRows | None = None

    def to(self, device: torch.device) -> TokenBatch:
        if self.input_ids.device == device:
            return self
        return TokenBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.response_mask.to(device),
            {k: v.to(device) for k, v in self.extra.items()},
            None if self.position_ids is None else self.position_ids.to(device),
            None if self.shared is None else self.shared.to(device),
        )

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def select(self, rows: list[int] | torch.Tensor) -> TokenBatch:
        assert self.position_ids is None and self.shared is None, "select rows before packing or sharing"
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


def pack(batch: TokenBatch, capacity: int = 0) -> TokenBatch:
    """The rows of ``batch`` laid end to end in as few rows of ``capacity`` tokens as fit.

    Padding to the longest row wastes compute on every shorter one; packing puts
    short sequences side by side instead (first-fit decreasing). Each sequence
    keeps its own positions, restarting at 0, and attention stays inside it: the
    model is called with ``position_ids`` and no attention mask, from which
    ``transformers`` builds the block-diagonal causal mask of packed sequences.
    The tail of a row is one more segment of padding that no loss reads. The
    prediction columns between two sequences are masked, so every per-token
    value (response mask, old logprobs, advantages, weights) lands where the same
    token's was, and any loss that sums over tokens is unchanged (tested).
    Per-row extras do not survive packing. ``capacity`` 0: the longest row.
    """
    lengths = [int(n) for n in batch.attention_mask.sum(-1).tolist()]
    capacity = max(capacity, max(lengths), 2)
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        b = next((b for b, f in enumerate(free) if lengths[i] <= f), None)
        if b is None:
            bins.append([])
            free.append(capacity)
            b = len(bins) - 1
        bins[b].append(i)
        free[b] -= lengths[i]
    width = max(capacity - f for f in free)
    P = len(bins)
    input_ids = torch.zeros((P, width), dtype=batch.input_ids.dtype)
    attention = torch.zeros((P, width), dtype=batch.attention_mask.dtype)
    positions = torch.zeros((P, width), dtype=torch.long)
    response = torch.zeros((P, width - 1), dtype=batch.response_mask.dtype)
    per_token = {k: v for k, v in batch.extra.items() if v.dim() == 2}
    extra = {k: torch.zeros((P, width - 1), dtype=v.dtype) for k, v in per_token.items()}
    for b, rows in enumerate(bins):
        o = 0
        for i in rows:
            n = lengths[i]
            input_ids[b, o : o + n] = batch.input_ids[i, :n]
            attention[b, o : o + n] = 1
            positions[b, o : o + n] = torch.arange(n)
            response[b, o : o + n - 1] = batch.response_mask[i, : n - 1]
            for k, v in per_token.items():
                extra[k][b, o : o + n - 1] = v[i, : n - 1]
            o += n
        positions[b, o:] = torch.arange(width - o)
    return TokenBatch(input_ids, attention, response, extra, positions)


def packed_micro_batches(batch: TokenBatch, micro_batch_size: int) -> list[TokenBatch]:
    """``batch`` packed into rows of its longest sequence's length, ``micro_batch_size`` packed rows per pass.

    A packed row is never longer than the longest original row, so a micro-batch
    holds no more tokens than an unpacked one of the same size: memory is bounded
    the same way, with the padding turned into real sequences.
    """
    packed = pack(batch)
    assert packed.position_ids is not None
    out = []
    for a in range(0, len(packed.input_ids), micro_batch_size):
        b = a + micro_batch_size
        out.append(
            TokenBatch(
                packed.input_ids[a:b],
                packed.attention_mask[a:b],
                packed.response_mask[a:b],
                {k: v[a:b] for k, v in packed.extra.items()},
                packed.position_ids[a:b],
            )
        )
    return out


def sequence_ids(batch: TokenBatch) -> torch.Tensor:
    """(B, T-1) long: the index of the sequence each prediction column belongs to.

    Aligned to ``response_mask``: column t predicts ``input_ids[:, t+1]`` from a context
    ending at token t, so it belongs to the sequence that holds token t. Unpacked rows
    are one sequence each: the id is the row index. In a packed row (``pack``) a
    sequence starts wherever ``position_ids`` is 0; ids count those starts in row-major
    order, so they are unique over the batch and a sequence's id is the same in every
    column of it. The column between two packed sequences (which predicts the next
    one's first token) and the row's padded tail carry ids too, but their response
    mask is 0, so no loss reads them.
    """
    B, T = batch.input_ids.shape
    if batch.position_ids is None:
        return torch.arange(B, device=batch.input_ids.device).unsqueeze(1).expand(B, T - 1).contiguous()
    starts = (batch.position_ids[:, : T - 1] == 0).long()
    starts[:, 0] = 1  # every row begins a sequence
    return (starts.flatten().cumsum(0) - 1).view(B, T - 1)


ROW = "row"  # pack_rows' per-token extra: the unpacked row each prediction column came from


def pack_rows(batch: TokenBatch) -> TokenBatch:
    """``pack(batch)`` that remembers where each sequence came from, for per-sequence sums (``row_sums``).

    DPO and reference scoring need one number per sequence, not a sum over the batch:
    ``extra[ROW]`` (P, W-1) long holds, at every column of a packed sequence, the row
    it had in ``batch``.
    """
    B, W = batch.response_mask.shape
    rows = torch.arange(B).unsqueeze(1).expand(B, W).contiguous()
    tagged = TokenBatch(batch.input_ids, batch.attention_mask, batch.response_mask, {**batch.extra, ROW: rows})
    return pack(tagged)


def row_sums(values: torch.Tensor, batch: TokenBatch, rows: int) -> torch.Tensor:
    """(rows,): ``values`` (B, T-1) summed over each sequence's response columns.

    Unpacked, the sequences are ``batch``'s rows; packed by ``pack_rows``, ``rows`` is the
    number of rows it was packed from and the sums come back in that order.
    """
    masked = values * batch.response_mask
    row = batch.extra.get(ROW)
    if row is None:
        return masked.sum(-1)
    return masked.new_zeros(rows).index_add(0, row.flatten(), masked.flatten())
