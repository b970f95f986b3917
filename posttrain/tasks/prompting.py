"""How a task's string prompts are put to the model: a prompt template, a system prompt, the chat template.

A chat model asked a raw string is off the distribution it was tuned on (and often
replies with nothing), so ``data.chat_template`` turns every string prompt into a
user turn, rendered with the tokenizer's chat template when it is encoded
(``posttrain.data.tokenize``):

- ``auto`` (default): on when the tokenizer brings a chat template of its own
  (``posttrain.data.tokenize.has_chat_template``; the built-in tiny tokenizer's
  minimal one does not count, so the built-in task's prompts and encodings are
  today's);
- ``on``: always (an error if the tokenizer has no template); ``off``: never.

``data.prompt_template`` rewrites each string prompt first: its ``{question}`` or
``{prompt}`` placeholder becomes the row's prompt (stripped of surrounding
whitespace; no other braces are read, so ``\\boxed{}`` may appear as it is).
``data.system_prompt`` becomes a system turn before the user's (message rows that
have no system turn get it too); with the chat template off it is a paragraph
before the prompt text. A ``{text}`` row (empty prompt) is left alone.

``StyledTask`` applies this to every example a task hands out, after the task has
chosen its splits (so the split is the same whatever the style), and so SFT's
demonstrations, RL's prompts, evaluation's problems and held-out loss all see
the same prompt, and the completion always follows the assistant turn's start.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from posttrain.errors import ConfigError
from posttrain.tasks.base import Example, Message, Prompt, Split, Task

_PLACEHOLDER = re.compile(r"\{(?:question|prompt)\}")


@dataclass(frozen=True)
class PromptStyle:
    template: str | None = None  # with a {question} or {prompt} placeholder
    system_prompt: str | None = None
    chat: bool = False  # string prompts become a user turn

    def __post_init__(self) -> None:
        if self.template is not None and not _PLACEHOLDER.search(self.template):
            raise ConfigError(
                f"expected a {{question}} or {{prompt}} placeholder, got {self.template!r}",
                field="data.prompt_template",
            )

    @property
    def active(self) -> bool:
        return bool(self.template or self.system_prompt or self.chat)

    def apply(self, prompt: Prompt, template: bool = True) -> Prompt:
        """``prompt`` as the model is asked it; ``template=False`` skips the prompt template (a literal prompt)."""
        if isinstance(prompt, list):
            if self.system_prompt and not any(m["role"] == "system" for m in prompt):
                return [{"role": "system", "content": self.system_prompt}, *prompt]
            return prompt
        if prompt == "":  # a {text} row: language modelling, nothing is asked
            return prompt
        text = prompt
        if template and self.template:
            stripped = prompt.strip()
            text = _PLACEHOLDER.sub(lambda _: stripped, self.template)
        if self.chat:
            system: list[Message] = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            return [*system, {"role": "user", "content": text.strip()}]
        return f"{self.system_prompt}\n\n{text}" if self.system_prompt else text


class StyledTask:
    """``task`` with its examples' prompts put as ``style`` says; everything else is ``task``'s."""

    def __init__(self, task: Task, style: PromptStyle) -> None:
        self.task = task
        self.style = style
        self.name = task.name

    def __getattr__(self, name: str) -> Any:  # path, verifier, test_file, count, ...
        if name == "task":  # not set yet (copying, unpickling)
            raise AttributeError(name)
        return getattr(self.task, name)

    def examples(self, split: Split, n: int | None, seed: int) -> list[Example]:
        return [self.restyle(ex) for ex in self.task.examples(split, n, seed)]

    def restyle(self, ex: Example) -> Example:
        return dataclasses.replace(ex, prompt=self.style.apply(ex.prompt))

    def prompt(self, example: Example) -> Prompt:
        # examples are styled when handed out; a prompt given literally (generate --prompt) goes
        # through styled_prompt
        return self.task.prompt(example)

    def verify(self, example: Example, completion: str) -> float:
        return self.task.verify(example, completion)

    def extract(self, completion: str) -> str | None:
        return self.task.extract(completion)


def styled_prompt(task: Task, text: str) -> Prompt:
    """A prompt typed by the user (``posttrain generate --prompt``) as ``task``'s style asks it, without the template."""
    return task.style.apply(text, template=False) if isinstance(task, StyledTask) else text
