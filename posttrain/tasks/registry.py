"""The task a config's ``data`` section names: the built-in arithmetic task or a user's file."""

from __future__ import annotations

from posttrain.config import DataConfig
from posttrain.tasks.arithmetic import ArithmeticTask
from posttrain.tasks.base import Task


def make_task(data: DataConfig) -> Task:
    if data.task == "arithmetic":
        return ArithmeticTask(data.arithmetic)
    from posttrain.tasks.jsonl import JsonlTask

    assert data.path is not None  # checked by config validation
    return JsonlTask(data.path, verifier=data.verifier, eval_path=data.eval_path, format=data.format)
