"""The teacher of on-policy distillation and KDRL: a frozen causal LM that scores the student's tokens.

Distillation compares the two models' distributions token by token, so the teacher
must read the same token ids as the student: ``check_same_tokenizer`` compares the
vocabularies (token -> id) and the special tokens' ids, not the tokenizers' names,
and refuses a mismatch in one line naming ``teacher.path``.

Who computes the teacher's numbers is ``teacher.backend`` (``open_teacher``), whatever
engine sampled the sequences (``engine.backend`` only decides who samples the student's):

- ``local``: a forward pass in the trainer's process (``LocalTeacher``). A teacher that
  samples (GKD's lambda < 1) is then a second in-process engine, offered with the torch
  engine only.
- ``ray``: one Ray actor holding the teacher (``posttrain.train.ray_teacher``), started
  like a rollout worker; it returns what the loss reads: the (B, T-1, V) logits for the
  full-vocabulary losses, the sampled tokens' logprobs otherwise. It also samples when
  the teacher does.
- ``vllm``: vLLM's prompt logprobs on this GPU (``posttrain.train.vllm_teacher``): the
  sampled tokens' logprobs only, at temperature 1 (vLLM does not scale prompt logprobs),
  so it serves ``distill.loss=sampled`` and KDRL's ``grpo.kd_coef``; ``check_teacher``
  refuses the rest in one line.

Every backend returns the same numbers for the same weights (the Ray actor's equal the
local ones to float tolerance: tested).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from posttrain.algorithms.logprobs import teacher_logits, token_logprobs
from posttrain.config import Config
from posttrain.data.batch import TokenBatch
from posttrain.device import precision
from posttrain.errors import ConfigError, PosttrainError
from posttrain.models.io import load_model, load_tokenizer
from posttrain.train import distributed

FIELD = "teacher.path"
BACKEND = "teacher.backend"


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


def check_teacher(cfg: Config, full_distribution: bool) -> None:
    """Refuse, in one line naming ``teacher.backend``, what ``cfg.teacher.backend`` cannot serve.

    ``full_distribution``: the loss reads the teacher's whole next-token distribution
    (``distill.loss`` reverse_kl or jsd), not only the sampled tokens' logprobs.
    """
    b = cfg.teacher.backend
    if b == "local":
        return
    if distributed.launched_world() > 1 or distributed.active():
        raise ConfigError(f"{BACKEND}={b} serves one trainer process: under torchrun use {BACKEND}=local",
                          field=BACKEND)  # fmt: skip
    if b == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError(f"{BACKEND}=ray needs Ray, which is not installed: pip install 'posttrain[ray]'",
                              field=BACKEND) from None  # fmt: skip
        return
    if full_distribution:
        raise ConfigError(
            f"distill.loss={cfg.distill.loss} reads the teacher's whole distribution, which vLLM's prompt logprobs "
            f"do not give: use distill.loss=sampled, or {BACKEND}=local or ray",
            field=BACKEND,
        )
    if cfg.sampling.temperature not in (0.0, 1.0):
        raise ConfigError(
            f"vLLM's prompt logprobs are at temperature 1, not sampling.temperature={cfg.sampling.temperature:g}: "
            f"use sampling.temperature=1, or {BACKEND}=local or ray",
            field=BACKEND,
        )
    if not torch.cuda.is_available():
        raise ConfigError(f"{BACKEND}=vllm needs a CUDA GPU; use {BACKEND}=local or ray", field=BACKEND)


class Teacher(Protocol):
    """Who scores the student's tokens (``teacher.backend``); ``batch`` as the trainer holds it."""

    full_distribution: bool  # ``logits`` is served (the full-vocabulary losses)

    def logits(self, batch: TokenBatch, temperature: float) -> torch.Tensor:
        """(B, T-1, V) next-token logits divided by ``temperature``."""
        ...

    def logprobs(self, batch: TokenBatch, temperature: float) -> torch.Tensor:
        """(B, T-1) logprobs of ``batch.input_ids[:, 1:]`` under softmax(logits / ``temperature``)."""
        ...

    def close(self) -> None: ...


class LocalTeacher:
    """The teacher as a module in this process (``teacher.backend=local``): the caller's device and autocast."""

    full_distribution = True

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def logits(self, batch: TokenBatch, temperature: float) -> torch.Tensor:
        return teacher_logits(self.module, batch, temperature)

    def logprobs(self, batch: TokenBatch, temperature: float) -> torch.Tensor:
        with torch.no_grad():
            return token_logprobs(self.module, batch, temperature)[0]

    def close(self) -> None:
        pass


def _teacher_tokenizer(cfg: Config, student_tokenizer: PreTrainedTokenizerBase) -> str:
    """``teacher.path``, after its tokenizer is checked against the student's."""
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
    return path


def load_teacher(
    cfg: Config, student_tokenizer: PreTrainedTokenizerBase, student_device: torch.device
) -> PreTrainedModel:
    """``teacher.path`` loaded frozen in eval mode, after its tokenizer is checked against the student's."""
    path = _teacher_tokenizer(cfg, student_tokenizer)
    device = str(student_device) if cfg.teacher.device == "auto" else cfg.teacher.device
    teacher = load_model(path, cfg.teacher.dtype, device)
    teacher.eval().requires_grad_(False)
    return teacher


def open_teacher(cfg: Config, student_tokenizer: PreTrainedTokenizerBase, student_device: torch.device) -> Teacher:
    """The ``teacher.backend`` that scores: a module here, a Ray actor or vLLM on this GPU."""
    b = cfg.teacher.backend
    if b == "local":
        return LocalTeacher(load_teacher(cfg, student_tokenizer, student_device))
    path = str(Path(_teacher_tokenizer(cfg, student_tokenizer)).resolve())
    if b == "ray":
        from posttrain.rollout.factory import init_ray
        from posttrain.train.ray_teacher import RayTeacher

        init_ray(cfg.engine)
        return RayTeacher(path, cfg.teacher.dtype, cfg.train.mixed_precision, cfg.engine.batch_size,
                          cfg.engine.generate_timeout_s)  # fmt: skip
    from posttrain.train.vllm_teacher import VLLMTeacher

    return VLLMTeacher(path, student_tokenizer, cfg.teacher.dtype, cfg.teacher.gpu_memory_utilization,
                       cfg.engine.enforce_eager, seed=cfg.seed)  # fmt: skip


@torch.no_grad()
def add_teacher_logprobs(teacher: Teacher, batch: TokenBatch, cfg: Config, device: torch.device) -> None:
    """The teacher's logprobs of every row's tokens, as the per-token field ``teacher_logprobs`` (KDRL)."""
    rows, chunk = list(range(len(batch.input_ids))), cfg.train.micro_batch_size
    temperature = cfg.sampling.temperature or 1.0
    with precision(device, cfg.train.mixed_precision):
        parts = [
            teacher.logprobs(batch.select(rows[s : s + chunk]).to(device), temperature).cpu()
            for s in range(0, len(rows), chunk)
        ]
    width = batch.response_mask.shape[1]
    batch.extra["teacher_logprobs"] = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])
