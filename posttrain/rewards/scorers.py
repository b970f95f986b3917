"""Reward functions: a task's verifier, or a reward model trained by ``posttrain rm``.

A ``RewardFn`` scores a batch of completion texts, each for its example, with one
float per completion. GRPO uses it as the reward; online DPO uses it to rank a
prompt's samples into pairs. Both pick one by name from ``REWARDS``.

A reward model is a Hugging Face ``*ForSequenceClassification`` directory with one
label: a causal LM with a scalar value head read at the last non-padding token. It
scores exactly what it was trained on: the prompt and the completion encoded as
``posttrain.data.tokenize.encode_example`` encodes a demonstration, ending in eos.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from posttrain.data.pairs import sequence_batches
from posttrain.data.tokenize import encode_example
from posttrain.errors import ModelError
from posttrain.models.io import DTYPES, check_causal_lm_dir, load_tokenizer
from posttrain.rewards.verifier import VerifierReward
from posttrain.tasks.base import Example, Task
from posttrain.train.device import resolve_device

RewardFn = Callable[[list[Example], list[str]], list[float]]


def load_reward_model(
    path: str | Path, dtype: str, tokenizer: PreTrainedTokenizerBase, device: str = "auto"
) -> PreTrainedModel:
    """A one-label sequence classifier from a causal LM directory (new head) or a saved reward model."""
    check_causal_lm_dir(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(path), num_labels=1, dtype=DTYPES[dtype], attn_implementation="sdpa"
    )
    model.to(resolve_device(device))  # type: ignore[arg-type]
    # the head reads the last token that is not padding, so the model must know the pad id
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def is_reward_model(path: str | Path) -> bool:
    cfg = Path(path) / "config.json"
    archs = json.loads(cfg.read_text()).get("architectures") or [] if cfg.is_file() else []
    return any(a.endswith("ForSequenceClassification") for a in archs)


@torch.no_grad()
def score_sequences(
    model: PreTrainedModel, sequences: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int
) -> torch.Tensor:
    """Reward (S,) of each (prompt ids, response ids)."""
    was_training = model.training
    model.eval()
    out = []
    for batch in sequence_batches(sequences, pad_id, batch_size, model.device):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        out.append(logits[:, 0].float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def verifier_reward(task: Task, path: str | None, dtype: str) -> RewardFn:
    return VerifierReward(task)


def reward_model_reward(task: Task, path: str | None, dtype: str, batch_size: int = 64) -> RewardFn:
    if path is None or not is_reward_model(path):
        raise ModelError(
            "not a reward model (expected a *ForSequenceClassification directory saved by `posttrain rm`)",
            file=str(path),
            field="reward_model_path",
        )
    tokenizer = load_tokenizer(path)
    model = load_reward_model(path, dtype, tokenizer)
    pad = int(tokenizer.pad_token_id)  # type: ignore[arg-type]

    def reward(examples: list[Example], texts: list[str]) -> list[float]:
        sequences = [
            encode_example(tokenizer, Example(id=ex.id, prompt=task.prompt(ex), completion=text), None)
            for ex, text in zip(examples, texts)
        ]
        return score_sequences(model, sequences, pad, batch_size).tolist()

    return reward


REWARDS: dict[str, Callable[[Task, str | None, str], RewardFn]] = {
    "verifier": verifier_reward,
    "reward_model": reward_model_reward,
}
