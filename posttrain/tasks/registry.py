"""The task a config's ``data`` section names: the built-in arithmetic task or a user's file.

``tokenizer`` (the model's) decides ``data.chat_template: auto``; without it string
prompts stay raw under ``auto``. ``whole_file``: the task is built for evaluation
alone (``posttrain eval``): without ``data.eval_path``, every row of ``data.path``
is a test row, instead of the hash split training uses.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from posttrain.config import DataConfig, LengthInstructionsConfig
from posttrain.data.tokenize import chat_enabled
from posttrain.errors import ConfigError
from posttrain.tasks.arithmetic import ArithmeticTask
from posttrain.tasks.base import Task
from posttrain.tasks.prompting import PromptStyle, StyledTask


def prompt_style(data: DataConfig, tokenizer: Any = None) -> PromptStyle:
    return PromptStyle(data.prompt_template, data.system_prompt, chat_enabled(tokenizer, data.chat_template))


def check_task_reads_path(data: DataConfig) -> None:
    """Refuse a ``data.path`` or ``data.eval_path`` the task would never read: the built-in task generates its own.

    ``data.task`` defaults to the built-in arithmetic task, so ``posttrain sft|grpo|eval|generate
    data.path=my.jsonl`` would otherwise train or evaluate on generated problems and never open the
    file. Refusing (rather than switching to the file) keeps ``data.task`` the one key that says which
    data a run reads; the message names the key to set.
    """
    if data.task != "arithmetic":
        return
    for key, value in (("data.path", data.path), ("data.eval_path", data.eval_path)):
        if value is not None:
            raise ConfigError(
                f"{key}={value} is set, but data.task is 'arithmetic' (the built-in generated problems), "
                f"which never reads it: set data.task=jsonl to use the file, or remove {key}",
                field="data.task",
            )


def task_data(data: DataConfig, name: str) -> DataConfig:
    """The ``data`` section of task ``name`` of ``data.tasks``: its own source, the run's prompt settings."""
    t = next(t for t in data.tasks if t.name == name)
    return dataclasses.replace(
        data, task=t.task, path=t.path, eval_path=t.eval_path, format=t.format, verifier=t.verifier,
        arithmetic=t.arithmetic, tasks=[], curriculum="fixed",
    )  # fmt: skip


def make_task(data: DataConfig, tokenizer: Any = None, whole_file: bool = False) -> Task:
    """The task every command (sft, grpo, online dpo, eval, generate) reads its problems from."""
    check_task_reads_path(data)
    if data.tasks:  # multi-task RL: one task per data.tasks entry, each built as its own data section
        from posttrain.tasks.multi import MultiTask

        parts = {t.name: make_task(task_data(data, t.name), tokenizer, whole_file) for t in data.tasks}
        return MultiTask(parts, {t.name: t.weight for t in data.tasks})
    task: Task
    if data.task == "arithmetic":
        task = ArithmeticTask(data.arithmetic)  # generated: its test split is all test problems already
    elif data.task == "aggregation":  # AggLM: problem + candidates from another model (tasks/aggregation.py)
        from posttrain.tasks.aggregation import make_aggregation_task

        def base_for(tok: Any) -> Task:
            base = dataclasses.replace(data, task=data.aggregation.base, length_instructions=LengthInstructionsConfig())
            return make_task(base, tok, whole_file)

        task = make_aggregation_task(base_for, data.aggregation, "float32", "auto")
    elif data.task == "mixed_decoding":  # exact and variety prompts, for adaptive decoding
        from posttrain.tasks.mixed_decoding import MixedDecodingTask

        task = MixedDecodingTask(data.mixed_decoding, data.arithmetic)
    elif data.task == "judge":
        from posttrain.tasks.judging import JudgeTask

        task = JudgeTask(data, whole_file=whole_file)  # verdict prompts for training a judge (J1)
    else:
        from posttrain.tasks.jsonl import JsonlTask

        assert data.path is not None  # checked by config validation
        task = JsonlTask(
            data.path,
            verifier=data.verifier,
            eval_path=data.eval_path,
            test_fraction=data.heldout_fraction,
            format=data.format,
            train_on=data.train_on,
            whole_file=whole_file,
        )
    if data.length_instructions.enabled:  # LIFT: a word limit before every prompt (tasks/length.py)
        from posttrain.tasks.length import LengthInstructedTask

        task = LengthInstructedTask(task, data.length_instructions)
    style = prompt_style(data, tokenizer)
    return StyledTask(task, style) if style.active else task
