"""Reward functions for the reward tests, in a light module that worker processes import by name."""

from __future__ import annotations

from typing import Any


def brevity(prompts: list[Any], completions: list[str], examples: list[Any]) -> list[float]:
    """1 - len / 10: shorter is better."""
    return [1.0 - len(c) / 10 for c in completions]


def positional(p: list[Any], c: list[str], e: list[Any]) -> list[float]:
    """Parameters named otherwise: called positionally."""
    return [float(len(t)) for t in c]


def trl_style(completions: list[str], **kwargs: Any) -> list[float]:
    """TRL's shape: completions plus keywords."""
    return [float("x" in t) for t in completions]


NOT_A_FUNCTION = 3


def flaky_brevity(prompts: list[Any], completions: list[str], examples: list[Any]) -> list[float]:
    """-len, except that it raises when the length is a multiple of 5 and hangs when it is one of 7."""
    import time

    out = []
    for c in completions:
        if len(c) % 5 == 0:
            raise ValueError(f"cannot score a completion of length {len(c)}")
        if len(c) % 7 == 0:
            time.sleep(60)
        out.append(-float(len(c)))
    return out
