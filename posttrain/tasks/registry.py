"""The task a config's ``data`` section names: the built-in arithmetic task or a user's file.

``tokenizer`` (the model's) decides ``data.chat_template: auto``; without it string
prompts stay raw under ``auto``. ``whole_file``: the task is built for evaluation
alone (``posttrain eval``): without ``data.eval_path``, every row of ``data.path``
is a test row, instead of the hash split training uses.
"""

from __future__ import annotations

from typing import Any

from posttrain.config import DataConfig
from posttrain.data.tokenize import chat_enabled
from posttrain.tasks.arithmetic import ArithmeticTask
from posttrain.tasks.base import Task
from posttrain.tasks.prompting import PromptStyle, StyledTask


def prompt_style(data: DataConfig, tokenizer: Any = None) -> PromptStyle:
    return PromptStyle(data.prompt_template, data.system_prompt, chat_enabled(tokenizer, data.chat_template))


def make_task(data: DataConfig, tokenizer: Any = None, whole_file: bool = False) -> Task:
    task: Task
    if data.task == "arithmetic":
        task = ArithmeticTask(data.arithmetic)  # generated: its test split is all test problems already
    else:
        from posttrain.tasks.jsonl import JsonlTask

        assert data.path is not None  # checked by config validation
        task = JsonlTask(
            data.path,
            verifier=data.verifier,
            eval_path=data.eval_path,
            format=data.format,
            train_on=data.train_on,
            whole_file=whole_file,
        )
    style = prompt_style(data, tokenizer)
    return StyledTask(task, style) if style.active else task
