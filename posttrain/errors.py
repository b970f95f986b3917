"""One error type for every input the user controls.

A ``PosttrainError`` renders as a single line naming where the problem is
(``file:line: field: message``). The CLI prints that line and exits non-zero;
library callers get an ordinary exception they can catch.
"""

from __future__ import annotations


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
