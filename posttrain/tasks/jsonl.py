"""A task over the user's own data: JSONL, Parquet or a saved ``datasets`` directory.

Every row becomes one ``Example``. Three row shapes are accepted, so one file format
serves SFT, GRPO and evaluation::

    {"prompt": "...", "answer": "42"}                  # RL / eval: a question and its gold answer
    {"prompt": "...", "completion": "...", ...}        # SFT: a demonstration (+ optional "answer")
    {"messages": [{"role": ..., "content": ...}, ...]}  # SFT, chat: the last message is the reply

Those are ``data.format: plain``; the shapes of common benchmarks (GSM8K, MATH,
multiple choice) are read by ``posttrain.tasks.formats``; files are read, and the
split chosen, by ``posttrain.tasks.rows``.

Rows are read and checked once, when the task is built, so a bad row stops a run
before any training with one line naming its file, line and field. When no held-out
file is given, the test split is chosen by a stable hash of each prompt: disjoint
from train, the same on every run and machine, and the same for repeated prompts.
"""

from __future__ import annotations

import random

from posttrain.errors import DataError
from posttrain.tasks.base import Example, Prompt, Split
from posttrain.tasks.formats import RowParser, resolve_verifier, row_parser
from posttrain.tasks.rows import Rows, load_splits, parse_rows
from posttrain.tasks.verifiers import Verifier, get_verifier


def _examples(rows: Rows, verifier: Verifier, parse: RowParser) -> list[Example]:
    parsed = parse_rows(rows, lambda row: parse(row, verifier))
    return [
        Example(
            id=f"{rows.id_prefix}:{line}",
            prompt=prompt,
            answer=answer,
            completion=completion,
            source=f"{rows.label}:{line}",
        )
        for line, (prompt, answer, completion) in parsed
    ]


# --- the task --------------------------------------------------------------------


class JsonlTask:
    name = "jsonl"

    def __init__(
        self,
        path: str,
        verifier: str = "auto",  # auto: the format's own checker (plain: last_number)
        eval_path: str | None = None,
        test_fraction: float = 0.1,
        format: str = "plain",
    ) -> None:
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        self.path = str(path)
        self.eval_path = None if eval_path is None else str(eval_path)
        self.format = format
        self._parse = row_parser(format)
        self.verifier = get_verifier(resolve_verifier(verifier, format))
        self.test_fraction = test_fraction
        self._splits = self._load()

    def _load(self) -> dict[Split, list[Example]]:
        def records(rows: Rows) -> list[Example]:
            return _examples(rows, self.verifier, self._parse)

        return load_splits(self.path, self.eval_path, self.test_fraction, records, lambda ex: ex.prompt)

    def examples(self, split: Split, n: int | None, seed: int) -> list[Example]:
        rows = self._splits[split]
        if not rows:
            # a run that trains or evaluates on nothing would report meaningless numbers
            total = sum(len(r) for r in self._splits.values())
            raise DataError(
                f"the {split} split is empty ({total} row{'s' if total != 1 else ''}, test_fraction={self.test_fraction}): "
                "add rows or give a held-out file (data.eval_path)",
                file=self.path,
            )
        if n is None:
            return list(rows)
        return random.Random(seed).sample(rows, min(n, len(rows)))

    def prompt(self, example: Example) -> Prompt:
        return example.prompt

    def verify(self, example: Example, completion: str) -> float:
        if example.answer is None:
            return 0.0
        return self.verifier.check(example.answer, completion)

    def extract(self, completion: str) -> str | None:
        return self.verifier.extract(completion)
