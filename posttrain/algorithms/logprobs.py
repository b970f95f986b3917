"""Per-token log-probabilities and entropy from one forward pass.

The one place logits become logprobs, so SFT, GRPO and evaluation agree with each
other and with the sampler (which uses the same ``softmax(logits / T)``).
"""

from __future__ import annotations

import torch

from posttrain.data.batch import TokenBatch


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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logprobs (B, T-1) of ``input_ids[:, 1:]`` under ``softmax(logits / temperature)``.

    ``with_entropy`` also returns the (B, T-1) entropy of that distribution, detached
    unless ``entropy_grad`` (needed when the loss has an entropy bonus).

    ``model`` is an HF causal LM, or a wrapper that forwards like one (DDP in training).
    A packed batch (``posttrain.data.batch.pack``) is passed as ``position_ids``
    without a mask, which ``transformers`` reads as packed sequences.
    """
    if batch.position_ids is not None:
        out = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False)
    else:
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    logits = out.logits[:, :-1]
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    logprobs = gather_logprobs(logits, batch.input_ids[:, 1:])
    entropy = entropy_from_logits(logits, grad=entropy_grad) if with_entropy else None
    return logprobs, entropy
