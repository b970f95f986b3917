"""The teacher in a Ray actor (``teacher.backend=ray``): its scores, and its samples when it samples.

A big teacher need not share the trainer's device: it lives in one actor, started and
watched as a rollout worker is (``posttrain.rollout.ray_engine``: the start limit, the
one-line errors, the actor killed on failure), on a GPU Ray assigns it or on the CPU.

What crosses to the actor is the batch's token ids, mask and positions; what comes back
is what the loss reads, computed by the same functions the local teacher runs, under
the trainer's ``train.mixed_precision``:

- ``logits``: the (B, T-1, V) next-token logits / temperature, for the full-vocabulary
  losses (``distill.loss`` reverse_kl and jsd). That is V floats per token through the
  object store, a micro-batch at a time: for a large vocabulary ``distill.loss=sampled``
  moves one float per token instead.
- ``logprobs``: the (B, T-1) logprobs of the sampled tokens (KDRL, ``distill.loss=sampled``).

``generate`` is the rollout worker's own: on GKD's teacher-sampled iterations the actor
samples, and one worker samples as the in-process engine does (``share_seed``). Its
weights are ``teacher.path``'s and are never synced.
"""

from __future__ import annotations

from pathlib import Path

import torch

from posttrain.data.batch import TokenBatch
from posttrain.rollout.ray_engine import RayEngine, RolloutWorker


class TeacherWorker(RolloutWorker):
    """The actor: a rollout worker over ``teacher.path`` that also scores token ids."""

    def score(self, batch: TokenBatch, temperature: float, full: bool) -> torch.Tensor:
        from posttrain.algorithms.logprobs import teacher_logits, token_logprobs
        from posttrain.device import precision

        model = self.engine.model
        mb = batch.to(model.device)
        with torch.no_grad(), precision(model.device, self.mixed_precision):
            out = teacher_logits(model, mb, temperature) if full else token_logprobs(model, mb, temperature)[0]
        return out.cpu()


class RayTeacher(RayEngine):
    """A ``Teacher`` (``posttrain.train.teacher``) over one ``TeacherWorker``. Needs ``ray.init``."""

    role, workers_field = "teacher worker", "teacher.backend"
    full_distribution = True

    def __init__(
        self,
        model_dir: str | Path,
        dtype: str = "float32",
        mixed_precision: str = "no",
        batch_size: int = 256,
        timeout_s: float = 600.0,
    ) -> None:
        super().__init__(model_dir, 1, dtype, batch_size, mixed_precision, sync_timeout_s=timeout_s,
                         generate_timeout_s=timeout_s, worker_cls=TeacherWorker)  # fmt: skip

    def logits(self, batch: TokenBatch, temperature: float) -> torch.Tensor:
        return self._score(batch, temperature, full=True)

    def logprobs(self, batch: TokenBatch, temperature: float) -> torch.Tensor:
        return self._score(batch, temperature, full=False)

    def _score(self, batch: TokenBatch, temperature: float, full: bool) -> torch.Tensor:
        """The actor's result on ``batch``'s device; the extras (advantages, weights) stay here."""
        sent = TokenBatch(batch.input_ids.cpu(), batch.attention_mask.cpu(), batch.response_mask.cpu(), {},
                          None if batch.position_ids is None else batch.position_ids.cpu())  # fmt: skip
        ref = self.actors[0].score.remote(sent, temperature, full)
        (out,) = self._wait([ref], self.generate_timeout_s, "score", "engine.generate_timeout_s")
        return out.to(batch.input_ids.device)
