"""The task protocol: where prompts come from and how a completion is checked.

A task is three things (``examples``, ``prompt``, ``verify``) plus the answer
extraction that majority voting needs (``extract``), so adding one is one file.
``Example`` is the plain record every stage reads: SFT trains on
``prompt -> completion``, GRPO and evaluation sample from ``prompt`` and score
with ``verify`` against ``answer``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, Union

Message = dict[str, str]
Prompt = Union[str, list[Message]]
Split = Literal["train", "test"]


@dataclass(frozen=True)
class Example:
    id: str
    prompt: Prompt  # plain text, or chat messages that end before the assistant's reply; "" for a {text} row
    answer: str | None = None  # the gold final answer, for verification
    completion: str | None = None  # a demonstration (SFT target, held-out NLL)
    source: str | None = None  # "file:line" of the row this came from, for error messages
    # SFT: the assistant turns inside ``prompt`` are targets too (a {messages} row under
    # data.train_on: all_assistant; see posttrain.data.tokenize.encode_demo)
    train_prompt_replies: bool = False


class Task(Protocol):
    name: str

    def examples(self, split: Split, n: int | None, seed: int) -> list[Example]:
        """``n`` examples of ``split`` (all of them when ``n`` is None), fixed by ``seed``."""
        ...

    def prompt(self, example: Example) -> Prompt:
        """What the model is asked: text, or messages rendered with the chat template."""
        ...

    def verify(self, example: Example, completion: str) -> float:
        """Reward of ``completion`` for ``example``: 1.0 correct, 0.0 wrong."""
        ...

    def extract(self, completion: str) -> str | None:
        """The normalised final answer in ``completion`` (for majority voting), or None."""
        ...
