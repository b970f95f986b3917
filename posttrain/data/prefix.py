"""Responses to one prompt in one row, their shared prefix computed once (DPO, GRPO with ``train.packing``).

A preference pair's chosen and rejected responses answer the same prompt, and often
begin alike too; padded or packed, the forward pass computes that common prefix
twice. Here each group of sequences with the same prompt becomes one segment of a
row: the longest prefix they all share (the prompt at least), then each sequence's
own remainder (its suffix), side by side::

    [ prefix | suffix 1 | suffix 2 | ... ]

Each suffix continues the prefix's positions and attends to the prefix and to
itself, never to another suffix, through a 4D attention mask (transformers passes
a 4D mask to attention as it is), so every hidden state is the one the sequence
alone would give. A response token is predicted from the position before it: for
the first token of a suffix that is the prefix's last position, shared by the
group, so ``SharedRows`` lists each (row, column, target token, sequence) read; a
shared response token is read once for each sequence it belongs to.

``share(batch)`` attaches these rows to a padded ``TokenBatch`` as its compute
layout: ``token_logprobs`` then runs the shared rows and returns the (B, T-1)
logprobs of the padded layout, so every loss and per-token field (advantages, old
logprobs, weights) is untouched, with the same values and gradients (tested). DPO
and GRPO use it with ``train.packing``: a pair's two responses, a GRPO group's G
samples, answer one prompt.

This is prefix sharing for preference training (Wang et al. 2024, "Accelerating
Direct Preference Optimization with Prefix Sharing", arXiv:2410.20305), written
for any number of responses per prompt (online DPO's pools) and packed, several
groups to a row (first-fit decreasing, rows of the longest group's length).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from posttrain.data.batch import SharedRows, TokenBatch

Sequence = tuple[list[int], list[int]]  # (prompt ids, response ids)


def _common_prefix(seqs: list[list[int]], prompt: int) -> int:
    """The longest prefix all of ``seqs`` share, at least ``prompt`` long, leaving each at least one token."""
    n = min(len(s) for s in seqs) - 1
    a = prompt
    while a < n and all(s[a] == seqs[0][a] for s in seqs[1:]):
        a += 1
    return a


def shared_rows(sequences: list[Sequence], reads: list[list[int]] | None = None) -> SharedRows:
    """``sequences`` grouped by prompt, each group's shared prefix once (module docstring).

    ``reads[i]``: the token indices of sequence i whose logprob is read (default: all of its
    response), in increasing order; a sequence with none is left out of the rows. The reads
    come sequence by sequence, in order; groups are laid into rows first-fit decreasing by length.
    """
    full = [p + c for p, c in sequences]
    wanted = reads if reads is not None else [list(range(len(p), len(f))) for (p, _), f in zip(sequences, full)]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (p, _) in enumerate(sequences):
        if wanted[i]:
            groups.setdefault(tuple(p), []).append(i)
    segments = []  # (prefix length, member indices, segment length)
    for prompt, members in groups.items():
        if len(prompt) == 0:
            raise ValueError("a sequence with an empty prompt has no position to predict its first token from")
        # one sequence alone is all prefix; several share what they all begin with
        a = len(full[members[0]]) if len(members) == 1 else _common_prefix([full[i] for i in members], len(prompt))
        segments.append((a, members, a + sum(len(full[i]) - a for i in members)))
    capacity = max(n for _, _, n in segments)
    bins: list[list[int]] = []
    free: list[int] = []
    for s in sorted(range(len(segments)), key=lambda s: -segments[s][2]):
        b = next((b for b, f in enumerate(free) if segments[s][2] <= f), None)
        if b is None:
            bins.append([])
            free.append(capacity)
            b = len(bins) - 1
        bins[b].append(s)
        free[b] -= segments[s][2]
    P, W = len(bins), max(capacity - f for f in free)
    input_ids = torch.zeros((P, W), dtype=torch.long)
    positions = torch.zeros((P, W), dtype=torch.long)
    group = torch.full((P, W), -1, dtype=torch.long)  # the segment a column is in; -1: the row's tail
    branch = torch.zeros((P, W), dtype=torch.long)  # 0: a prefix column; k: the k-th suffix of its segment
    found: list[list[tuple[int, int, int, int]]] = [[] for _ in sequences]
    for b, segs in enumerate(bins):
        o = 0
        for s in segs:
            a, members, n = segments[s]
            prefix = full[members[0]][:a]
            input_ids[b, o : o + a] = torch.tensor(prefix)
            positions[b, o : o + a] = torch.arange(a)
            group[b, o : o + n] = s
            u = o + a  # where the next suffix starts
            for k, i in enumerate(members, start=1):
                suffix = full[i][a:]
                input_ids[b, u : u + len(suffix)] = torch.tensor(suffix, dtype=torch.long)
                positions[b, u : u + len(suffix)] = torch.arange(a, a + len(suffix))
                branch[b, u : u + len(suffix)] = k
                # token t is predicted from token t - 1's column: in the prefix (o + t - 1) or in this suffix
                for t in wanted[i]:
                    found[i].append((b, o + t - 1 if t - 1 < a else u + t - 1 - a, full[i][t], i))
                u += len(suffix)
            o += n
        positions[b, o:] = torch.arange(W - o)
    same = group.unsqueeze(2) == group.unsqueeze(1)  # (P, W, W): query, key
    causal = positions.unsqueeze(2) >= positions.unsqueeze(1)
    visible = (branch.unsqueeze(1) == 0) | (branch.unsqueeze(2) == branch.unsqueeze(1))
    mask = same & causal & visible & (group.unsqueeze(2) >= 0)
    mask |= torch.eye(W, dtype=torch.bool).unsqueeze(0)  # a tail column attends to itself: no empty softmax row
    r = torch.tensor([x for f in found for x in f], dtype=torch.long).reshape(-1, 4)
    return SharedRows(
        input_ids=input_ids,
        attention_mask=mask.unsqueeze(1),
        position_ids=positions,
        rows=r[:, 0],
        cols=r[:, 1],
        targets=r[:, 2],
        sequence=r[:, 3],
    )


def share(batch: TokenBatch) -> TokenBatch:
    """``batch`` (padded rows) with prefix-shared rows as its compute layout (``TokenBatch.shared``).

    Each row's sequence is its attended tokens; its prompt, what comes before the first
    column ``response_mask`` reads; the reads, the columns it sets. Rows with the same
    prompt share a row and the prompt once.
    """
    assert batch.position_ids is None and batch.shared is None, "share padded rows"
    lengths = batch.attention_mask.sum(-1).tolist()
    sequences, reads = [], []
    for i, n in enumerate(lengths):
        tokens = batch.input_ids[i, : int(n)].tolist()
        cols = (batch.response_mask[i, : max(int(n) - 1, 0)] > 0).nonzero().flatten().tolist()
        start = cols[0] + 1 if cols else len(tokens)  # column c predicts token c + 1
        sequences.append((tokens[:start], tokens[start:]))
        reads.append([c + 1 for c in cols])
    if not any(reads):  # nothing is read (every response masked): the padded rows, which no loss reads either
        return batch
    return replace(batch, shared=shared_rows(sequences, reads))
