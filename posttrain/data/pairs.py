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
from typing import Literal

import torch

from posttrain.data.batch import TokenBatch, collate, length_buckets, pack_rows
from posttrain.data.prefix import share

Sequence = tuple[list[int], list[int]]  # (prompt ids, response ids)
EncodedPair = tuple[list[int], list[int], list[int]]  # (prompt ids, chosen ids, rejected ids)
# how a PairBatch lays out its sequences (``collate_pairs``): padded rows, packed rows, prefix-shared rows
Layout = Literal["pad", "pack", "share"]


@dataclass
class PairBatch:
    tokens: TokenBatch  # (S, T): the distinct responses the pairs use (packed or prefix-shared by ``layout``)
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


def preference_layout(packing: bool) -> Layout:
    """DPO's layout for ``train.packing``: a prompt's responses share one row and the prompt (``share``)."""
    return "share" if packing else "pad"


def collate_pairs(
    sequences: list[Sequence],
    pairs: list[tuple[int, int, float]],
    pad_id: int,
    ref_logps: torch.Tensor | None = None,
    layout: Layout = "pad",
) -> PairBatch:
    """``pairs`` of (chosen index, rejected index, weight) into ``sequences`` -> a PairBatch.

    Only the sequences some pair uses become rows, each once; ``ref_logps`` (len(sequences),)
    follows them. ``layout``: ``pad`` to the longest; ``pack``, the rows laid end to end
    (``pack_rows``); ``share``, the responses to one prompt in one row, their common prefix once
    (``posttrain.data.prefix``). With ``train.packing`` DPO shares, the reward model packs. Every
    layout gives the padded per-sequence sums.
    """
    row_of: dict[int, int] = {}
    for c, r, _ in pairs:
        row_of.setdefault(c, len(row_of))
        row_of.setdefault(r, len(row_of))
    used = list(row_of)
    tokens = collate([sequences[i][0] for i in used], [sequences[i][1] for i in used], pad_id)
    return PairBatch(
        tokens=_laid_out(tokens, layout),
        chosen=torch.tensor([row_of[c] for c, _, _ in pairs], dtype=torch.long),
        rejected=torch.tensor([row_of[r] for _, r, _ in pairs], dtype=torch.long),
        weights=torch.tensor([w for _, _, w in pairs], dtype=torch.float32),
        ref_logps=None if ref_logps is None else ref_logps[used],
    )


def sequence_batches(
    sequences: list[Sequence], pad_id: int, batch_size: int, device: torch.device, layout: Layout = "pad"
) -> Iterator[TokenBatch]:
    """``sequences`` in order, ``batch_size`` at a time onto ``device`` (for no-grad scoring), laid out
    as ``layout`` says (``collate_pairs``; read them with ``posttrain.algorithms.logprobs.response_sums``;
    batch i holds sequences i*batch_size...)."""
    for s in range(0, len(sequences), batch_size):
        chunk = sequences[s : s + batch_size]
        yield _laid_out(collate([p for p, _ in chunk], [c for _, c in chunk], pad_id), layout).to(device)


def _laid_out(batch: TokenBatch, layout: Layout) -> TokenBatch:
    return share(batch) if layout == "share" else pack_rows(batch) if layout == "pack" else batch


def flatten_pairs(data: list[EncodedPair]) -> list[Sequence]:
    """Pair i's chosen response is sequence 2i, its rejected one 2i + 1."""
    return [seq for p, c, r in data for seq in ((p, c), (p, r))]


def pair_micro_batches(
    data: list[EncodedPair],
    rows: list[int],
    micro_batch_size: int,
    pad_id: int,
    ref_logps: torch.Tensor | None = None,
    layout: Layout = "pad",
) -> list[PairBatch]:
    """One optimiser step's pairs ``rows`` of ``data``, bucketed by length into micro-batches.

    ``micro_batch_size`` counts pairs (two sequences each); ``ref_logps`` is (len(data), 2);
    ``layout``: how each micro-batch's sequences are laid out (``collate_pairs``).
    """
    lengths = [len(data[i][0]) + max(len(data[i][1]), len(data[i][2])) for i in rows]
    out = []
    for bucket in length_buckets(lengths, list(range(len(rows))), micro_batch_size):
        picked = [rows[j] for j in bucket]
        sequences = flatten_pairs([data[i] for i in picked])
        ref = None if ref_logps is None else ref_logps[picked].reshape(-1)
        pairs = [(2 * k, 2 * k + 1, 1.0) for k in range(len(picked))]
        out.append(collate_pairs(sequences, pairs, pad_id, ref, layout))
    return out
