"""Preference pairs as training tensors: one forward pass for chosen and rejected together.

A ``PairBatch`` holds every distinct response its pairs use as rows of one
``TokenBatch`` (chosen and rejected concatenated along the batch dimension), and
each pair as two row indices and a weight. Offline data has two rows per pair;
online, GroupDPO's k x m pairs of a prompt share its k + m sampled responses, so
each response is run once however many pairs it is in.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from posttrain.data.batch import TokenBatch, collate, length_buckets, pack_rows, row_sums

Sequence = tuple[list[int], list[int]]  # (prompt ids, response ids)
EncodedPair = tuple[list[int], list[int], list[int]]  # (prompt ids, chosen ids, rejected ids)


@dataclass
class PairBatch:
    tokens: TokenBatch  # (S, T): the distinct responses the pairs use
    chosen: torch.Tensor  # (P,) long: the row of each pair's chosen response
    rejected: torch.Tensor  # (P,) long
    weights: torch.Tensor  # (P,) float: each pair's weight in the step's loss
    ref_logps: torch.Tensor | None = None  # (S,) summed reference logprob of each row's response

    @property
    def num_tokens(self) -> int:
        return self.tokens.num_tokens

    @property
    def num_sequences(self) -> int:
        """S: every response is some pair's chosen or rejected one (``collate_pairs``)."""
        return int(torch.maximum(self.chosen.max(), self.rejected.max())) + 1 if len(self.chosen) else 0

    def to(self, device: torch.device) -> PairBatch:
        return PairBatch(
            self.tokens.to(device),
            self.chosen.to(device),
            self.rejected.to(device),
            self.weights.to(device),
            None if self.ref_logps is None else self.ref_logps.to(device),
        )


def collate_pairs(
    sequences: list[Sequence],
    pairs: list[tuple[int, int, float]],
    pad_id: int,
    ref_logps: torch.Tensor | None = None,
    packing: bool = False,
) -> PairBatch:
    """``pairs`` of (chosen index, rejected index, weight) into ``sequences`` -> a PairBatch.

    Only the sequences some pair uses become rows, each once; ``ref_logps`` (len(sequences),)
    follows them. ``packing`` (``train.packing``): the rows laid end to end (``pack_rows``)
    instead of padded to the longest; ``response_logprobs`` gives the same sums either way.
    """
    row_of: dict[int, int] = {}
    for c, r, _ in pairs:
        row_of.setdefault(c, len(row_of))
        row_of.setdefault(r, len(row_of))
    used = list(row_of)
    tokens = collate([sequences[i][0] for i in used], [sequences[i][1] for i in used], pad_id)
    return PairBatch(
        tokens=pack_rows(tokens) if packing else tokens,
        chosen=torch.tensor([row_of[c] for c, _, _ in pairs], dtype=torch.long),
        rejected=torch.tensor([row_of[r] for _, r, _ in pairs], dtype=torch.long),
        weights=torch.tensor([w for _, _, w in pairs], dtype=torch.float32),
        ref_logps=None if ref_logps is None else ref_logps[used],
    )


def sequence_batches(
    sequences: list[Sequence], pad_id: int, batch_size: int, device: torch.device, packing: bool = False
) -> Iterator[TokenBatch]:
    """``sequences`` in order, ``batch_size`` at a time onto ``device`` (for no-grad scoring): collated, or
    packed with ``packing`` (read them with ``response_logprobs``; batch i holds sequences i*batch_size...)."""
    for s in range(0, len(sequences), batch_size):
        chunk = sequences[s : s + batch_size]
        batch = collate([p for p, _ in chunk], [c for _, c in chunk], pad_id)
        yield (pack_rows(batch) if packing else batch).to(device)


def response_logprobs(logprobs: torch.Tensor, tokens: TokenBatch, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token logprobs (B, T-1) of ``tokens`` -> (summed response logprob (n,), response length (n,)),
    one per sequence in the order they were collated, packed or not."""
    return row_sums(logprobs, tokens, n), row_sums(tokens.response_mask, tokens, n)  # the 0/1 mask squared is itself


def flatten_pairs(data: list[EncodedPair]) -> list[Sequence]:
    """Pair i's chosen response is sequence 2i, its rejected one 2i + 1."""
    return [seq for p, c, r in data for seq in ((p, c), (p, r))]


def pair_micro_batches(
    data: list[EncodedPair],
    rows: list[int],
    micro_batch_size: int,
    pad_id: int,
    ref_logps: torch.Tensor | None = None,
    packing: bool = False,
) -> list[PairBatch]:
    """One optimiser step's pairs ``rows`` of ``data``, bucketed by length into micro-batches.

    ``micro_batch_size`` counts pairs (two sequences each); ``ref_logps`` is (len(data), 2);
    ``packing``: each micro-batch's sequences packed (``collate_pairs``).
    """
    lengths = [len(data[i][0]) + max(len(data[i][1]), len(data[i][2])) for i in rows]
    out = []
    for bucket in length_buckets(lengths, list(range(len(rows))), micro_batch_size):
        picked = [rows[j] for j in bucket]
        sequences = flatten_pairs([data[i] for i in picked])
        ref = None if ref_logps is None else ref_logps[picked].reshape(-1)
        pairs = [(2 * k, 2 * k + 1, 1.0) for k in range(len(picked))]
        out.append(collate_pairs(sequences, pairs, pad_id, ref, packing))
    return out
