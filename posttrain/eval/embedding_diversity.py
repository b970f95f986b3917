"""DivPO's ``embedding`` criterion: a response's mean cosine distance to its pool, in a model's hidden space.

DivPO (Lanchantin et al. 2025, "Diverse Preference Optimization", arXiv 2501.18101)
picks the most diverse high-quality response of a pool as the chosen one. Here a
response's diversity is the mean, over the pool's other responses, of the cosine
distance 1 - cos(e_i, e_j) between their embeddings, and an embedding is the
mean-pooled last hidden state of a causal LM over the response's tokens (the
response alone, without the prompt: every response of a pool shares the prompt,
which would only pull the vectors together).

The model is the policy being trained (online DPO: its current weights; offline
pools: the model ``model.path`` names, as the policy starts) or a model of one's
own (``dpo.divpo_embedding_model``). Two identical responses have the same
embedding, so their distance is exactly 0.

A response with no tokens is embedded as the tokenizer's eos token alone, so every
response has a vector. A pool of one response has diversity 0.

Under torchrun the policy's forward is collective: every rank embeds its own pools
in the same number of batches (ranks hold equal numbers of samples).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.tokenization_utils_base import PreTrainedTokenizerBase


@torch.no_grad()
def mean_pooled_embeddings(
    model: Any, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int = 16
) -> torch.Tensor:
    """(N, H) float32: each text's last hidden states averaged over its tokens (right-padded batches).

    ``model`` is a Hugging Face causal LM (or a peft model around one); its training
    flag is restored afterwards.
    """
    eos = int(tokenizer.eos_token_id)  # type: ignore[arg-type]
    pad = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else eos  # type: ignore[arg-type]
    rows = [list(tokenizer(t, add_special_tokens=False)["input_ids"]) or [eos] for t in texts]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(rows), batch_size):
            part = rows[start : start + batch_size]
            L = max(len(r) for r in part)
            ids = torch.full((len(part), L), pad, dtype=torch.long, device=device)
            mask = torch.zeros((len(part), L), dtype=torch.long, device=device)
            for i, r in enumerate(part):
                ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
                mask[i, : len(r)] = 1
            hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
            last = hidden.hidden_states[-1].float()  # (b, L, H)
            m = mask.unsqueeze(-1).float()
            out.append((last * m).sum(1) / m.sum(1))
    finally:
        model.train(was_training)
    return torch.cat(out).cpu() if out else torch.zeros((0, 0))


def cosine_distance_to_others(vectors: torch.Tensor) -> list[float]:
    """vectors (G, H) -> each row's mean cosine distance 1 - cos to the other G - 1 rows; [0.0] for G = 1."""
    G = vectors.shape[0]
    if G < 2:
        return [0.0] * G
    unit = torch.nn.functional.normalize(vectors.double(), dim=-1)
    distance = 1.0 - unit @ unit.T  # (G, G), zero on the diagonal up to rounding
    distance.fill_diagonal_(0.0)
    return (distance.sum(1) / (G - 1)).tolist()


def embedding_diversity(
    model: Any, tokenizer: PreTrainedTokenizerBase, pools: Sequence[Sequence[str]], batch_size: int = 16
) -> list[list[float]]:
    """Each response's diversity within its pool (larger: farther from the rest), one list per pool."""
    flat = [t for pool in pools for t in pool]
    vectors = mean_pooled_embeddings(model, tokenizer, flat, batch_size)
    out, start = [], 0
    for pool in pools:
        out.append(cosine_distance_to_others(vectors[start : start + len(pool)]))
        start += len(pool)
    return out
