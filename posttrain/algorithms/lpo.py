"""Latent Preference Optimization (LPO): DPO on a temperature head's choices.

From "Adaptive Decoding via Latent Preference Optimization" (Dhuliawala et al. 2024,
arXiv 2411.09661, Section 3.3, checked against the paper's text). For a prompt x the
model samples N responses, each with the temperatures its head picked
(``Completion.temperature_choices``); a reward ranks them, and "the highest and lowest
scoring responses become our chosen and rejected response pair" (y_c, y_r), with the
temperatures tau_c, tau_r used to sample them. The paper gives three ways to adapt DPO
(Rafailov et al. 2023, arXiv 2305.18290) and trains with the second by default
(Section 4.1). That is the one implemented here, "Temperatures as tokens (separate)",
Eq. (10):

    L_LPO = -log sigma[ beta log P(tau_c) - beta log P(tau_r) ]

"Again we omit the reference probabilities for the temperature tokens" (footnote 3:
as if the reference head were uniform). P(tau) is the head's probability of the choices
a response was sampled with: for AdaptiveDecoder_seq (Eq. 8) the one pick from the
prompt's last hidden state h_T, log P(tau) = log AD(tau | h_T); for AdaptiveDecoder_tok
(Eq. 7) the product over the response's steps, log P(tau) = sum_t log AD(tau_t | h_t),
h_t the hidden state that gave token t's logits. The language model is frozen
(Section 4.1): the hidden states carry no gradient and only the head trains.

Not implemented: Eq. (9), the same margin plus DPO's word-token log-ratio, which trains
the LM and the head together; and Eq. (11), "temperatures as latents", DPO on the token
probabilities with the temperature marginalised out, sum_tau P(y_t | tau) P(tau).

Without the reference term a fresh head (uniform, ``posttrain.models.temperature_head``)
gives every choice log(1/K): per example the margin is 0 and the loss ln 2; per token it
is ln 2 when chosen and rejected have as many choices, and otherwise the margin starts
at (n_c - n_r) log(1/K), so footnote 3's "uniform reference" equivalence holds only for
equal counts. ``ref_chosen``/``ref_rejected`` (not in the paper) give DPO's log-ratio
form against a frozen head, where the loss is ln 2 at the start whatever the lengths;
the recipe does not use them.

As for DPO (``posttrain.algorithms.dpo``) the loss is a weighted sum over pairs; the
training loop divides by the step's total pair weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from posttrain.algorithms.types import LossOutput
from posttrain.records import Completion


@dataclass
class ChoiceBatch:
    """Responses' temperature choices and the hidden states they were made from.

    Per-token head: T is the longest response; per-example head: T = 1.
    """

    hidden: torch.Tensor  # (B, T, H) the frozen LM's last hidden states, no gradient
    choices: torch.Tensor  # (B, T) long: indices into the head's temperatures
    mask: torch.Tensor  # (B, T) float: 1 where a choice was made


@dataclass
class LPOBatch:
    """P pairs: row i of ``chosen`` was preferred over row i of ``rejected``."""

    chosen: ChoiceBatch
    rejected: ChoiceBatch
    weights: torch.Tensor  # (P,)


def choice_logprobs(log_probs: torch.Tensor, choices: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log_probs (B, T, K), choices (B, T), mask (B, T) -> (B,) summed log-probability of the choices made."""
    picked = log_probs.gather(-1, choices.unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def lpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    weights: torch.Tensor,
    beta: float,
    ref_chosen: torch.Tensor | None = None,
    ref_rejected: torch.Tensor | None = None,
) -> LossOutput:
    """The weighted sum over pairs of -log sigmoid(beta * margin); all inputs (P,).

    ``chosen``/``rejected``: the summed log-probabilities of each response's temperature
    choices (``choice_logprobs``). With the reference's, the margin is DPO's log-ratio one.

    Metrics (weighted means over pairs): ``choice_accuracy`` (the margin is positive),
    ``choice_margin``, ``chosen_choice_logps``, ``rejected_choice_logps``.
    """
    margin = chosen - rejected
    if ref_chosen is not None and ref_rejected is not None:
        margin = margin - (ref_chosen - ref_rejected)
    per_pair = -F.logsigmoid(beta * margin)
    w = weights.detach()
    n = float(w.sum())

    def mean(values: torch.Tensor) -> tuple[float, float]:
        return float((values.detach() * w).sum()), n

    metrics = {
        "choice_accuracy": mean((margin > 0).float()),
        "choice_margin": mean(margin),
        "chosen_choice_logps": mean(chosen),
        "rejected_choice_logps": mean(rejected),
    }
    return LossOutput(loss_sum=(per_pair * weights).sum(), metrics=metrics)


def lpo_batch_loss(head: torch.nn.Module, batch: LPOBatch, beta: float) -> LossOutput:
    """``lpo_loss`` of ``head`` (hidden (..., H) -> logits (..., K)) on one micro-batch of pairs."""

    def logps(b: ChoiceBatch) -> torch.Tensor:
        return choice_logprobs(head(b.hidden).float().log_softmax(-1), b.choices, b.mask)

    return lpo_loss(logps(batch.chosen), logps(batch.rejected), batch.weights, beta)


@torch.no_grad()
def choice_batch(model: torch.nn.Module, completions: Sequence[Completion], level: str, pad_id: int) -> ChoiceBatch:
    """The frozen ``model``'s hidden states at the positions where the head chose, with the choices.

    One forward over each prompt + response, right-padded (positions count from each
    row's first token, as the sampler's do). Per token, choice t was made from the
    hidden state at position ``len(prompt) - 1 + t`` (the one that gave response token
    t's logits); per example, from the prompt's last position.
    """
    device = next(model.parameters()).device
    rows = [list(c.prompt_ids) + list(c.completion_ids) for c in completions]
    for c in completions:
        if c.temperature_choices is None:
            raise ValueError("a completion sampled without a temperature head has no choices to train on")
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long, device=device)
    attention = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        attention[i, : len(r)] = 1
    out = model(input_ids=ids, attention_mask=attention, output_hidden_states=True, use_cache=False)
    hidden = out.hidden_states[-1]  # (B, L, H), after the final norm: what lm_head and the sampler's head read
    T = 1 if level == "example" else max(len(c.temperature_choices or []) for c in completions)
    choices = torch.zeros((len(rows), T), dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), T), device=device)
    positions = torch.zeros((len(rows), T), dtype=torch.long, device=device)
    for i, c in enumerate(completions):
        picks = list(c.temperature_choices or [])[:T]
        choices[i, : len(picks)] = torch.tensor(picks, dtype=torch.long)
        mask[i, : len(picks)] = 1.0
        start = len(c.prompt_ids) - 1
        positions[i] = torch.arange(start, start + T).clamp(max=L - 1)
    gathered = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    return ChoiceBatch(hidden=gathered.detach(), choices=choices, mask=mask)
