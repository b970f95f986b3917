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

from posttrain.data.batch import ROW, TokenBatch
from posttrain.data.pairs import sequence_batches
from posttrain.data.tokenize import encode_example
from posttrain.device import resolve_device
from posttrain.errors import ConfigError, ModelError
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


def sequence_rewards(model: PreTrainedModel, tokens: TokenBatch, rows: int, pad_id: int) -> torch.Tensor:
    """(rows,) float reward of each sequence of ``tokens``: padded rows, or rows packed by ``pack_rows``.

    Padded, the model's own forward reads its head at each row's rightmost token that
    is not ``pad_id``. Packed (``train.packing``), the backbone runs over the packed rows
    (``position_ids``, so attention stays inside each sequence) and the head is read at
    the same token of each sequence (rightmost non-pad, as the padded forward picks it,
    so the two agree when pad is eos), the rewards back in the order the rows were packed from.
    """
    if tokens.position_ids is None:
        return model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).logits[:, 0].float()
    backbone, head = getattr(model, model.base_model_prefix, None), getattr(model, "score", None)
    if not isinstance(backbone, torch.nn.Module) or not isinstance(head, torch.nn.Linear):
        raise ConfigError(
            f"{type(model).__name__} has no backbone and `score` head to read packed sequences; set it to false",
            field="train.packing",
        )
    P, W = tokens.input_ids.shape
    # no cache: with one, transformers reads position_ids as one sequence a row, not as packed ones
    hidden = backbone(input_ids=tokens.input_ids, position_ids=tokens.position_ids, use_cache=False).last_hidden_state
    flat = hidden.reshape(P * W, -1)
    starts = tokens.position_ids == 0  # every sequence and the padded tail of a row start at position 0
    segment = starts.flatten().long().cumsum(0) - 1  # (P*W,) the segment each token is in
    column = torch.arange(P * W, device=flat.device)
    readable = ((tokens.attention_mask > 0) & (tokens.input_ids != pad_id)).flatten()
    last = torch.full((int(segment[-1]) + 1,), -1, dtype=torch.long, device=flat.device)
    last = last.scatter_reduce(0, segment[readable], column[readable], "amax")
    # a sequence's original row: ROW at its first token (its column predicts the second token, so it is set)
    first = column[starts.flatten() & (tokens.attention_mask > 0).flatten()]
    row = tokens.extra[ROW].reshape(P, W - 1)
    origin = row[first // W, first % W]
    picked = last[segment[first]]
    if len(first) != rows or bool((picked < 0).any()):
        raise ValueError(f"{len(first)} packed sequences with a readable token, expected {rows}")
    rewards = head(flat[picked])[:, 0].float()
    return rewards[torch.argsort(origin)]


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
