"""The teacher of on-policy distillation and KDRL: a frozen causal LM that scores the student's tokens.

Distillation compares the two models' distributions token by token, so the teacher
must read the same token ids as the student: ``check_same_tokenizer`` compares the
vocabularies (token -> id) and the special tokens' ids, not the tokenizers' names,
and refuses a mismatch in one line naming ``teacher.path``.

The teacher's numbers come from a forward pass in the trainer's process over the
sequences the sampler produced, whatever engine sampled them (``engine.backend``
only decides who samples). A teacher that samples (GKD's lambda < 1) is a second
in-process engine; on Ray or vLLM engines that is not offered yet.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from posttrain.algorithms.logprobs import token_logprobs
from posttrain.config import Config
from posttrain.data.batch import TokenBatch
from posttrain.device import precision
from posttrain.errors import ConfigError, PosttrainError
from posttrain.models.io import load_model, load_tokenizer

FIELD = "teacher.path"


def _first_difference(student: dict[str, int], teacher: dict[str, int]) -> str:
    if len(student) != len(teacher):
        return f"{len(teacher)} tokens against the student's {len(student)}"
    for token, i in sorted(student.items(), key=lambda kv: kv[1]):
        if teacher.get(token) != i:
            where = "is missing" if token not in teacher else f"is id {teacher[token]}"
            return f"the student's token {token!r} (id {i}) {where} in the teacher's"
    return "the vocabularies differ"


def check_same_tokenizer(student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase, path: str) -> None:
    """Refuse a teacher whose token ids mean other tokens than the student's (ConfigError on ``teacher.path``)."""
    s, t = student.get_vocab(), teacher.get_vocab()
    why = None if s == t else _first_difference(s, t)
    for name in ("eos_token_id", "bos_token_id"):
        if why is None and getattr(student, name) != getattr(teacher, name):
            why = f"{name} is {getattr(teacher, name)} against the student's {getattr(student, name)}"
    if why is not None:
        raise ConfigError(
            f"the teacher's tokenizer is not the student's ({why}); distillation compares the two models "
            "token by token, so the teacher needs the student's vocabulary",
            file=path,
            field=FIELD,
        )


def check_teacher_early(cfg: Config) -> None:
    """Refuse a missing teacher or one with another tokenizer before any training starts.

    Only when ``model.path`` is a directory (the tokenizer is at hand without loading a
    model); ``load_teacher`` checks again against the tokenizer the run really uses.
    """
    path, student = cfg.teacher.path, cfg.model.path
    if path is None:
        return
    if not Path(path).exists():
        raise ConfigError(f"{path}: no such directory", field=FIELD)
    if student is None or not Path(student).is_dir():
        return
    try:
        ours, theirs = load_tokenizer(student), load_tokenizer(path)
    except PosttrainError:
        return  # said in full where the run loads them
    check_same_tokenizer(ours, theirs, path)


def load_teacher(
    cfg: Config, student_tokenizer: PreTrainedTokenizerBase, student_device: torch.device
) -> PreTrainedModel:
    """``teacher.path`` loaded frozen in eval mode, after its tokenizer is checked against the student's."""
    path = cfg.teacher.path
    if path is None:
        raise ConfigError("needs a teacher: set teacher.path to a causal LM directory (e.g. a run's final/)",
                          field=FIELD)  # fmt: skip
    if not Path(path).exists():
        raise ConfigError(f"{path}: no such directory", field=FIELD)
    try:
        tokenizer = load_tokenizer(path)
    except PosttrainError as e:
        raise ConfigError(f"cannot load the teacher's tokenizer: {e.message}", file=path, field=FIELD) from None
    check_same_tokenizer(student_tokenizer, tokenizer, path)
    device = str(student_device) if cfg.teacher.device == "auto" else cfg.teacher.device
    teacher = load_model(path, cfg.teacher.dtype, device)
    teacher.eval().requires_grad_(False)
    return teacher


def teacher_logits(teacher: torch.nn.Module, batch: TokenBatch, temperature: float) -> torch.Tensor:
    """(B, T-1, V) the teacher's next-token logits over ``batch``, divided by ``temperature``; no gradient."""
    with torch.no_grad():
        if batch.position_ids is not None:
            out = teacher(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False)
        else:
            out = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        logits = out.logits[:, :-1].float()
    return logits / temperature if temperature not in (0.0, 1.0) else logits


@torch.no_grad()
def add_teacher_logprobs(teacher: torch.nn.Module, batch: TokenBatch, cfg: Config, device: torch.device) -> None:
    """The teacher's logprobs of every row's tokens, as the per-token field ``teacher_logprobs`` (KDRL)."""
    rows, chunk = list(range(len(batch.input_ids))), cfg.train.micro_batch_size
    temperature = cfg.sampling.temperature or 1.0
    with precision(device, cfg.train.mixed_precision):
        parts = [
            token_logprobs(teacher, batch.select(rows[s : s + chunk]).to(device), temperature)[0].cpu()
            for s in range(0, len(rows), chunk)
        ]
    width = batch.response_mask.shape[1]
    batch.extra["teacher_logprobs"] = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])
