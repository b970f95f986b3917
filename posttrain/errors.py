"""One error type for every input the user controls.

A ``PosttrainError`` renders as a single line naming where the problem is
(``file:line: field: message``). The CLI prints that line and exits non-zero;
library callers get an ordinary exception they can catch.
"""

from __future__ import annotations

import math


class PosttrainError(Exception):
    """Bad input from the user: a config, a data file, a model directory."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        super().__init__(self.render())

    def render(self) -> str:
        where = ""
        if self.file is not None:
            where = str(self.file)
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.message}"


class ConfigError(PosttrainError):
    """A config file or override that does not fit the schema."""


class DataError(PosttrainError):
    """A data row that is missing a field, has the wrong type, or does not parse."""


class ModelError(PosttrainError):
    """A model directory that cannot be used as a causal language model."""


class RolloutError(PosttrainError):
    """A rollout or reward worker that hung, died or failed: named, with the setting that bounds it."""


class TrainingError(PosttrainError):
    """A run that cannot go on from what the user set: stopped with the step and what to change."""


class NonFiniteStepError(TrainingError):
    """An optimiser step whose loss or gradient norm is inf or NaN; the update was not applied.

    The loop knows the step and the values, not where the run keeps its checkpoints, so the
    message names the setting to change and the directory by its place in ``output_dir``.
    """

    def __init__(self, step: int, loss: float, grad_norm: float) -> None:
        self.step = step
        self.loss = loss
        self.grad_norm = grad_norm
        if math.isfinite(loss):
            what = f"the gradient norm is {grad_norm:g} (loss {loss:.4g})"
        else:
            what = f"the loss is {loss:g} (gradient norm {grad_norm:g})"
        super().__init__(
            f"optimiser step {step}: {what}; the update was not applied and training stopped: "
            "lower optim.lr (in bfloat16 or float16, or use model.dtype=float32); "
            "the checkpoints already in output_dir/checkpoints are untouched"
        )


class CheckpointError(PosttrainError):
    """A checkpoint that cannot be trusted, read or written: named, with what to do about it."""
