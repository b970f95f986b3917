"""A task over the user's own data: JSONL, Parquet or a saved ``datasets`` directory.

Every row becomes one ``Example``. Three row shapes are accepted, so one file format
serves SFT, GRPO and evaluation::

    {"prompt": "...", "answer": "42"}                  # RL / eval: a question and its gold answer
    {"prompt": "...", "completion": "...", ...}        # SFT: a demonstration (+ optional "answer")
    {"messages": [{"role": ..., "content": ...}, ...]}  # SFT, chat: every assistant turn a target
    {"text": "..."}                                    # SFT: plain language modelling

(``prompt`` and ``completion`` may also be messages.) Those are ``data.format:
plain``; the shapes of common benchmarks (GSM8K, MATH, multiple choice) are read
by ``posttrain.tasks.formats``; files are read, and the split chosen, by
``posttrain.tasks.rows``. Under ``data.train_on: last_assistant`` a ``{messages}``
row's earlier assistant turns are context, as they were before every turn was trained.

Rows are read and checked once, when the task is built, so a bad row stops a run
before any training with one line naming its file, line and field. When no held-out
file is given, the test split is chosen by a stable hash of each prompt: disjoint
from train, the same on every run and machine, and the same for repeated prompts.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from posttrain.errors import DataError
from posttrain.tasks.base import Example, Prompt, Split
from posttrain.tasks.formats import RowParser, resolve_verifier, row_parser
from posttrain.tasks.rows import Rows, load_splits, parse_rows
from posttrain.tasks.verifiers import Verifier, get_verifier

TrainOn = Literal["all_assistant", "last_assistant"]


def _has_replies(prompt: Prompt) -> bool:
    # an opening assistant turn has no context to be trained from: it stays context
    return isinstance(prompt, list) and any(m["role"] == "assistant" for m in prompt[1:])


def _examples(rows: Rows, verifier: Verifier, parse: RowParser, train_on: TrainOn) -> list[Example]:
    def one(row: Any) -> tuple[tuple[Prompt, str | None, str | None], bool]:
        return parse(row, verifier), isinstance(row, dict) and "messages" in row

    return [
        Example(
            id=f"{rows.id_prefix}:{line}",
            prompt=prompt,
            answer=answer,
            completion=completion,
            source=f"{rows.label}:{line}",
            # only a {messages} conversation's turns are all demonstrations; a prompt-completion
            # row's prompt is context whatever it holds
            train_prompt_replies=conversation and train_on == "all_assistant" and _has_replies(prompt),
        )
        for line, ((prompt, answer, completion), conversation) in parse_rows(rows, one)
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
        train_on: TrainOn = "all_assistant",  # {messages} rows: which assistant turns SFT trains
        whole_file: bool = False,  # evaluation: without eval_path, every row of path is a test row
    ) -> None:
        if not 0 <= test_fraction < 1:
            raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
        self.path = str(path)
        self.eval_path = None if eval_path is None else str(eval_path)
        self.test_file = self.eval_path or self.path  # where the test split's rows come from
        self.format = format
        self._parse = row_parser(format)
        self.verifier = get_verifier(resolve_verifier(verifier, format))
        self.test_fraction = test_fraction
        self.train_on = train_on
        self.whole_file = whole_file and self.eval_path is None
        self._splits = self._load()

    def _load(self) -> dict[Split, list[Example]]:
        def records(rows: Rows) -> list[Example]:
            return _examples(rows, self.verifier, self._parse, self.train_on)

        def split_key(ex: Example) -> Prompt:
            return ex.prompt or (ex.completion or "")  # a {text} row has no prompt: its text decides

        return load_splits(self.path, self.eval_path, self.test_fraction, records, split_key, self.whole_file)

    def count(self, split: Split) -> int:
        """How many examples ``split`` holds."""
        return len(self._splits[split])

    def examples(self, split: Split, n: int | None, seed: int) -> list[Example]:
        rows = self._splits[split]
        if not rows and self.whole_file and split == "train":
            raise DataError("this task holds an evaluation file: every row is a test row", file=self.path)
        if not rows:
            # a run that trains or evaluates on nothing would report meaningless numbers
            total = sum(len(r) for r in self._splits.values())
            raise DataError(
                f"the {split} split is empty ({total} row{'s' if total != 1 else ''}, data.heldout_fraction={self.test_fraction}): "
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
