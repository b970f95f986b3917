"""Check functions for the worker-process tests, in a module with light imports.

A worker process imports the module of the function it is sent; keeping these
out of the test files spares each fresh worker the import of torch.
"""

from __future__ import annotations

import os
import time

from posttrain.tasks.verifiers import judge


def echo(gold: str, text: str) -> tuple[str | None, float]:
    return text, float(gold == text)


def misbehave(gold: str, text: str) -> tuple[str | None, float]:
    """Hangs, raises or kills its own process when the completion asks it to."""
    if text == "hang":
        time.sleep(3600)
    if text == "raise":
        raise RuntimeError("boom")
    if text == "die":
        os._exit(3)
    return text, float(gold == text)


def hang_on_gold(name: str, gold: str, text: str) -> tuple[str | None, float]:
    """``verifiers.judge``, except that a problem whose gold answer is ``HANG`` never finishes."""
    if gold == "HANG":
        time.sleep(3600)
    return judge(name, gold, text)
