"""Token-level distillation losses: a student matched to a teacher on the same tokens.

All per-token functions take logits aligned to ``response_mask`` (column t predicts
``input_ids[:, t+1]``) and return (B, T-1) values; ``distill_loss`` sums them with a
mask and per-token weights into a ``LossOutput`` (sum and count: the loop divides).

- ``reverse_kl``: KL(student || teacher) = sum_v p_s(v) (log p_s(v) - log p_t(v)) over the
  whole vocabulary at every position of the student's own samples. On-policy
  distillation (Agarwal et al. 2024, "On-Policy Distillation of Language Models:
  Learning from Self-Generated Mistakes", GKD, arXiv 2306.13649; Gu et al. 2024,
  MiniLLM, arXiv 2306.08543): mode-seeking, the student is not pushed to cover what
  the teacher puts mass on but the student cannot produce.
- ``generalized_jsd``: GKD's JSD(beta) (GKD, section 3, eq. for D_JSD(beta)):
  with M = beta p_t + (1 - beta) p_s,
  JSD(beta) = beta KL(p_t || M) + (1 - beta) KL(p_s || M).
  Both ends of beta vanish in the limit, so, as GKD's beta is read in practice, the
  end points are the KLs the mixture tends to: beta = 0 is the forward KL(p_t || p_s),
  beta = 1 the reverse KL(p_s || p_t).
- ``sampled_reverse_kl``: the single-sample estimate on the sampled token only,
  log p_s(y_t) - log p_t(y_t), for when only the teacher's logprob of the sampled token
  is at hand (a remote teacher). Its value estimates the reverse KL; its gradient is
  taken as a policy gradient with per-token advantage -(log p_s - log p_t) (the "as RL"
  reading of on-policy distillation in METHODS.md): loss = sg(log p_s - log p_t) * log p_s,
  whose expectation under the student is the reverse KL's gradient. (The k1 value
  itself as a loss would have zero expected gradient.)

Memory: the full-distribution losses hold the (B, T-1, V) log-softmax of both models.
``chunk`` positions at a time bounds the float32 temporaries each step makes (the
mixture, the teacher's upcast); what autograd keeps for the backward is the student's
log-softmax either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from posttrain.algorithms.types import LossOutput, masked_sum

DEFAULT_CHUNK = 256  # positions per chunk of the full-vocabulary losses


def _chunked(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    chunk: int,
) -> torch.Tensor:
    """``fn`` over (B, t, V) slices of both logits along the sequence, concatenated to (B, T)."""
    V = min(student_logits.shape[-1], teacher_logits.shape[-1])  # a padded embedding's extra rows are never sampled
    T = student_logits.shape[1]
    parts = [
        fn(student_logits[:, s : s + chunk, :V].float(), teacher_logits[:, s : s + chunk, :V].detach().float())
        for s in range(0, T, max(chunk, 1))
    ]
    return torch.cat(parts, dim=1) if parts else student_logits.new_zeros(student_logits.shape[:2])


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dimension, from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """(B, T, V) logits of each -> (B, T) KL(student || teacher); gradient to the student only."""

    def fn(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return _kl(s.log_softmax(-1), t.log_softmax(-1))

    return _chunked(fn, student_logits, teacher_logits, chunk)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """(B, T, V) logits of each -> (B, T) KL(teacher || student): the SFT-like, mass-covering direction."""

    def fn(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return _kl(t.log_softmax(-1), s.log_softmax(-1))

    return _chunked(fn, student_logits, teacher_logits, chunk)


def generalized_jsd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float, chunk: int = DEFAULT_CHUNK
) -> torch.Tensor:
    """(B, T) GKD's JSD(beta): beta KL(t || M) + (1 - beta) KL(s || M), M = beta t + (1 - beta) s.

    beta = 0 and beta = 1 are the forward and the reverse KL (see the module docstring).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, chunk)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, chunk)

    def fn(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        log_s, log_t = s.log_softmax(-1), t.log_softmax(-1)
        log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log(1.0 - beta))
        return beta * _kl(log_t, log_m) + (1.0 - beta) * _kl(log_s, log_m)

    return _chunked(fn, student_logits, teacher_logits, chunk)


def sampled_reverse_kl(logprobs: torch.Tensor, teacher_logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) sampled tokens' logprobs -> (surrogate, value): sg(log s - log t) * log s, and log s - log t."""
    gap = logprobs - teacher_logprobs
    return gap.detach() * logprobs, gap.detach()


def distill_loss(
    per_token: torch.Tensor, response_mask: torch.Tensor, weights: torch.Tensor | None = None
) -> LossOutput:
    """Sum of ``per_token`` (B, T) over ``response_mask`` times ``weights`` (default: the mask); metric ``distill``."""
    w = response_mask if weights is None else weights * response_mask
    return LossOutput(
        loss_sum=(per_token * w).sum(),
        metrics={"distill": (masked_sum(per_token, response_mask), float(response_mask.sum()))},
    )
