"""Reward functions for the recipe tests, as ``kind: python`` components.

The recipes score in a deadline pool of worker processes (or Ray actors), which
import a reward function by its module's name: these live here, in a light module
(no torch), and a test names one as

    reward.components=[{kind: python, function: tests.rewards:shorter_is_better}]

Each has the ``kind: python`` shape (``posttrain.rewards.python``): lists in, one
score per completion out; the recipes call it with one sample at a time.
"""

from __future__ import annotations

import time
from typing import Any


def shorter_is_better(prompts: list[Any], completions: list[str], examples: list[Any]) -> list[float]:
    """-len: a preference on nearly every prompt, so every step has groups with signal and pairs."""
    return [-float(len(c)) for c in completions]


def char_sum_parity(prompts: list[Any], completions: list[str], examples: list[Any]) -> list[float]:
    """The parity of the sum of character codes: distinct samples, even of an untrained model, often differ."""
    return [float(sum(map(ord, c)) % 2) for c in completions]


def always_one(prompts: list[Any], completions: list[str], examples: list[Any]) -> list[float]:
    """Every sample right: no preference anywhere."""
    return [1.0] * len(completions)


def always_zero(prompts: list[Any], completions: list[str], examples: list[Any]) -> list[float]:
    """Every sample wrong: no preference anywhere."""
    return [0.0] * len(completions)


def picky(prompts: list[Any], completions: list[str], examples: list[Any]) -> list[float]:
    """1.0 for "good", 0.0 for anything else, and a crash on "boom", like a parser bug."""
    if "boom" in completions:
        raise ZeroDivisionError("the parser divided by zero")
    return [float(c == "good") for c in completions]


def flaky(prompts: list[Any], completions: list[str], examples: list[Any]) -> list[float]:
    """A verifier with a bug ("boom") and an input it never finishes ("hang")."""
    if completions[0] == "boom":
        raise ValueError("cannot parse")
    if completions[0] == "hang":
        time.sleep(600)
    return [float(c == "good") for c in completions]


def flaky_parity(prompts: list[Any], completions: list[str], examples: list[Any]) -> list[float]:
    """len % 2, with a bug some of the tiny model's completions hit, deterministically (len % 3 == 0)."""
    if any(len(c) % 3 == 0 for c in completions):
        raise RuntimeError("unparseable")
    return [float(len(c) % 2) for c in completions]
