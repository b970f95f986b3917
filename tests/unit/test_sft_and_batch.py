"""SFT loss, loss masks, and the shared collate."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.algorithms.logprobs import gather_logprobs
from posttrain.algorithms.sft import sft_loss
from posttrain.data.batch import collate, length_buckets, per_token


def test_collate_masks_prompt_tokens() -> None:
    """Prompt [5, 6], completion [7, 2]: input 5 6 7 2; targets 6 7 2; scored targets 7 and 2."""
    b = collate([[5, 6], [9]], [[7, 2], [2]], pad_id=0)
    assert b.input_ids.tolist() == [[5, 6, 7, 2], [9, 2, 0, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert b.response_mask.tolist() == [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]


def test_per_token_aligns_with_response_mask() -> None:
    b = collate([[5, 6], [9]], [[7, 2], [2]], pad_id=0)
    vals = per_token([[-1.0, -2.0], [-3.0]], [2, 1], b.response_mask.shape[1])
    assert vals.tolist() == [[0.0, -1.0, -2.0], [-3.0, 0.0, 0.0]]
    assert torch.equal(vals != 0, b.response_mask.bool())


def test_sft_loss_by_hand() -> None:
    """Two scored tokens with p = 0.5 and p = 0.25: summed NLL = ln 2 + ln 4 = 3 ln 2.
    The prompt token (p = 0.1) is masked out."""
    lp = torch.log(torch.tensor([[0.1, 0.5, 0.25]]))
    out = sft_loss(lp, torch.tensor([[0.0, 1.0, 1.0]]))
    assert out.loss_sum.item() == pytest.approx(3 * math.log(2))
    assert out.metrics["nll"][1] == 2.0


def test_gather_logprobs_matches_log_softmax() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 11)
    targets = torch.randint(0, 11, (2, 3))
    expected = logits.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)
    assert torch.allclose(gather_logprobs(logits, targets), expected, atol=1e-6)


def test_length_buckets_keep_the_step_rows() -> None:
    lengths = [5, 1, 9, 3, 7, 2]
    buckets = length_buckets(lengths, [0, 1, 2, 3, 4, 5], micro_batch_size=2)
    assert sorted(i for b in buckets for i in b) == [0, 1, 2, 3, 4, 5]
    assert buckets == [[1, 5], [3, 0], [4, 2]]
