"""``kind: reward_model``: a reward model trained by ``posttrain rm`` as a reward component.

A reward model is a Hugging Face ``*ForSequenceClassification`` directory with one
label: a causal LM with a scalar value head read at the last non-padding token. It
scores exactly what it was trained on: the prompt and the completion encoded as
``posttrain.data.tokenize.encode_example`` encodes a demonstration, ending in eos.

It runs in this process, batched: a forward pass cannot hang like a parser can,
and a copy per deadline worker would multiply its memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from posttrain.data.pairs import sequence_batches
from posttrain.data.tokenize import encode_example
from posttrain.device import resolve_device
from posttrain.errors import ModelError
from posttrain.models.io import DTYPES, check_causal_lm_dir, load_tokenizer
from posttrain.rewards.base import Job
from posttrain.tasks.base import Example, Prompt, Task


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


class RewardModelComponent:
    """The reward model's scalar per (prompt, completion), in this process, ``batch_size`` sequences a pass."""

    isolate = False

    def __init__(
        self,
        task: Task,
        path: str | None,
        dtype: str,
        *,
        device: str = "auto",
        batch_size: int = 64,
        name: str = "reward_model",
        field: str = "reward.components.0.path",
    ) -> None:
        if path is None or not is_reward_model(path):
            raise ModelError(
                "not a reward model (expected a *ForSequenceClassification directory saved by `posttrain rm`)",
                file=str(path),
                field=field,
            )
        self.task, self.name, self.batch_size = task, name, batch_size
        self.tokenizer = load_tokenizer(path)
        self.model = load_reward_model(path, dtype, self.tokenizer, device)
        self.pad = int(self.tokenizer.pad_token_id)  # type: ignore[arg-type]

    def score(self, examples: list[Example], prompts: list[Prompt], texts: list[str]) -> list[float | None]:
        sequences = [
            encode_example(self.tokenizer, Example(id=ex.id, prompt=prompt, completion=text), None)
            for ex, prompt, text in zip(examples, prompts, texts)
        ]
        return list(score_sequences(self.model, sequences, self.pad, self.batch_size).tolist())

    def job(self, example: Example, prompt: Prompt, text: str) -> Job:
        raise NotImplementedError("a reward model runs in this process, batched")
