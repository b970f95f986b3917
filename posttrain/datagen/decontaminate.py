"""``posttrain data decontaminate``: drop training rows that share an n-gram with an evaluation row.

The rule of GPT-3 (Brown et al. 2020, appendix C): after lowercasing and stripping
punctuation, a training row is contaminated when any of its ``ngram``-word sequences
(13 by default; TULU 3 reports 8-gram overlap) occurs in an evaluation row. An
evaluation row shorter than ``ngram`` words is one gram of its own length, so a short
question is still protected: a training row containing all of it, in order, matches.

Every removed row names the evaluation file and line it matched and the shared words,
so a reviewer can check each decision. The evaluation index is built once per worker
(``posttrain.datagen.backend``); matching a row is independent of every other row.
"""

from __future__ import annotations

import functools
from typing import Any

from posttrain.config import Config
from posttrain.datagen.backend import map_batches
from posttrain.datagen.io import Numbered, Outcome, read_numbered, texts_of
from posttrain.datagen.text import field_list, ngrams, words
from posttrain.errors import DataError

Where = tuple[str, int]  # (evaluation file, line)


class Index:
    """Every evaluation n-gram (by length) -> the first (file, line) holding it."""

    def __init__(self, evals: list[tuple[str, int, str]], n: int) -> None:
        self.n = n
        self.grams: dict[int, dict[str, Where]] = {}
        for file, line, text in evals:
            for gram in ngrams(words(text), n):
                self.grams.setdefault(len(gram), {}).setdefault(" ".join(gram), (file, line))

    def match(self, text: str) -> tuple[Where, str] | None:
        """The first evaluation row (and the shared words) a training text overlaps, or None."""
        tokens = words(text)
        for length in sorted(self.grams, reverse=True):  # the full n first, then shorter eval rows
            if len(tokens) < length:
                continue
            table = self.grams[length]
            for i in range(len(tokens) - length + 1):
                key = " ".join(tokens[i : i + length])
                if key in table:
                    return table[key], key
        return None

    def __call__(self, texts: list[str]) -> list[Any]:
        return [self.match(t) for t in texts]


def _make_index(evals: list[tuple[str, int, str]], n: int) -> Index:
    return Index(evals, n)


def read_evals(cfg: Config) -> list[tuple[str, int, str]]:
    """(file, line, compared text) of every evaluation row."""
    d = cfg.datagen.decontaminate
    if not d.eval_paths:
        raise DataError("name the evaluation files: datagen.decontaminate.eval_paths=[FILE, ...]",
                        field="datagen.decontaminate.eval_paths")  # fmt: skip
    out: list[tuple[str, int, str]] = []
    for path in d.eval_paths:
        label, rows = read_numbered(path, "datagen.decontaminate.eval_paths")
        texts = texts_of(label, rows, field_list(d.eval_fields), "datagen.decontaminate.eval_fields")
        out.extend((label, line, text) for (line, _), text in zip(rows, texts))
    return out


def decontaminate(cfg: Config, rows: Numbered, texts: list[str]) -> Outcome:
    """Keep the rows that share no ``ngram``-gram with any evaluation row."""
    n = cfg.datagen.decontaminate.ngram
    evals = read_evals(cfg)
    matches = map_batches(functools.partial(_make_index, evals, n), texts, cfg.datagen)
    outcome = Outcome()
    for (line, row), found in zip(rows, matches):
        if found is None:
            outcome.kept.append((line, row))
            continue
        (file, eval_line), shared = found
        outcome.remove(line, row, "eval_overlap", eval_file=file, eval_line=eval_line, ngram=shared)
    outcome.extra["settings"] = {"ngram": n, "eval_paths": list(cfg.datagen.decontaminate.eval_paths),
                                 "eval_rows": len(evals)}  # fmt: skip
    return outcome
