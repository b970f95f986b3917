"""Prompts and demonstrations to token ids, with the chat template when data has messages.

For message-shaped data the completion's tokens are found by rendering the
conversation twice, without and with the final assistant turn, and taking the
difference. This works with any chat template, including those without
``{% generation %}`` tags (whose assistant-only masks come back all zeros in
other frameworks), and fails loudly when a template rewrites earlier turns.

A multi-turn demonstration whose earlier assistant turns are targets too
(``Example.train_prompt_replies``, from ``data.train_on: all_assistant``) is
encoded by ``encode_demo`` the same way, one turn at a time: ids plus a weight
per completion token, 1 on every assistant turn (and its end-of-turn tokens), 0
on the user turns between them. Its last turn is encoded exactly as
``encode_example`` encodes it, so the final reply's tokens are the same either way.

A ``{text}`` row (``Example.prompt == ""``) is plain language modelling: every
token is a target but the first, which is the beginning-of-sequence token when
the tokenizer has one.

Whether a string prompt goes through the chat template is the task's business
(``posttrain.tasks.prompting`` turns it into a user turn); ``chat_enabled`` is
the rule ``data.chat_template`` follows.
"""

from __future__ import annotations

from typing import Any, Literal

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from posttrain.errors import ConfigError, DataError
from posttrain.models.tiny import CHAT_TEMPLATE as TINY_CHAT_TEMPLATE
from posttrain.tasks.base import Example, Message, Prompt

ChatMode = Literal["auto", "on", "off"]
# (prompt ids, completion ids, loss weight of each completion token)
Demo = tuple[list[int], list[int], list[float]]


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` brings a chat template of its own, i.e. belongs to a chat model.

    The built-in tiny tokenizer's minimal template does not count: it exists so that
    message rows can be read, and the tiny model is a base model trained on raw text.
    """
    template = getattr(tokenizer, "chat_template", None)
    return bool(template) and template != TINY_CHAT_TEMPLATE


def chat_enabled(tokenizer: Any, mode: ChatMode) -> bool:
    """Whether string prompts become chat turns under ``data.chat_template: mode``.

    ``auto`` without a tokenizer to look at is off, today's raw prompts.
    """
    if mode == "off":
        return False
    if mode == "on":
        if tokenizer is not None and not getattr(tokenizer, "chat_template", None):
            raise ConfigError("is on, but the tokenizer has no chat template", field="data.chat_template")
        return True
    return tokenizer is not None and has_chat_template(tokenizer)


def _split_source(ex: Example) -> tuple[str | None, int | None]:
    if not ex.source:
        return None, None
    file, _, line = ex.source.rpartition(":")
    return (file, int(line)) if line.isdigit() else (ex.source, None)


def example_error(ex: Example, field: str, message: str) -> DataError:
    file, line = _split_source(ex)
    return DataError(message, file=file or f"example {ex.id}", line=line, field=field)


def _chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list[Message], generation: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=generation, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> list[int]:
    if isinstance(prompt, str):
        return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    return _chat_ids(tokenizer, prompt, generation=True)


def _encode_text(tokenizer: PreTrainedTokenizerBase, ex: Example, text: str) -> tuple[list[int], list[int]]:
    """A ``{text}`` row: the first token is context (bos when there is one), every later one a target."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [int(bos), *ids]
    if len(ids) < 2:
        raise example_error(ex, "text", "the text is too short to train on: it needs two tokens or more")
    return ids[:1], ids[1:]


def encode_example(tokenizer: PreTrainedTokenizerBase, ex: Example, max_len: int | None) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids ending in eos) of a demonstration."""
    if ex.completion is None:
        raise example_error(ex, "completion", "this row has no demonstration to train on")
    eos = tokenizer.eos_token_id
    if ex.prompt == "":
        prompt, completion = _encode_text(tokenizer, ex, ex.completion)
    elif isinstance(ex.prompt, str):
        prompt = encode_prompt(tokenizer, ex.prompt)
        completion = list(tokenizer(ex.completion, add_special_tokens=False)["input_ids"])
    else:
        prompt = encode_prompt(tokenizer, ex.prompt)
        messages = list(ex.prompt) + [{"role": "assistant", "content": ex.completion}]
        full = _chat_ids(tokenizer, messages, generation=False)
        if full[: len(prompt)] != prompt:
            raise example_error(
                ex, "messages", "the chat template renders earlier turns differently once the reply is added"
            )
        completion = full[len(prompt) :]
    if eos is not None and eos not in completion:
        completion.append(int(eos))
    check_length(ex, len(prompt), len(completion), max_len)
    return prompt, completion


def _reply_spans(tokenizer: PreTrainedTokenizerBase, ex: Example, full: list[int]) -> list[tuple[int, int]]:
    """[start, end) in ``full`` of each assistant turn inside ``ex.prompt`` that has context before it."""
    assert isinstance(ex.prompt, list)
    spans = []
    for i, message in enumerate(ex.prompt):
        if i == 0 or message["role"] != "assistant":
            continue
        start = _chat_ids(tokenizer, ex.prompt[:i], generation=True)
        end = _chat_ids(tokenizer, ex.prompt[: i + 1], generation=False)
        if full[: len(start)] != start or full[: len(end)] != end:
            raise example_error(
                ex,
                "messages",
                f"the chat template renders turn {i} differently once later turns are added, so its tokens "
                "cannot be told apart: train on the last reply only (data.train_on: last_assistant)",
            )
        spans.append((len(start), len(end)))
    return spans


def encode_demo(tokenizer: PreTrainedTokenizerBase, ex: Example, max_len: int | None) -> Demo:
    """(prompt ids, completion ids, per-token loss weights) of a demonstration, every reply a target.

    Without earlier replies to train (``ex.train_prompt_replies`` false, or none in the
    prompt) this is ``encode_example`` with every weight 1. Otherwise the completion
    starts at the first trained reply; the weights are 1 on each assistant turn and on
    the final reply, 0 on the turns between them.
    """
    prompt, completion = encode_example(tokenizer, ex, max_len)
    if not (ex.train_prompt_replies and isinstance(ex.prompt, list)):
        return prompt, completion, [1.0] * len(completion)
    full = prompt + completion
    spans = _reply_spans(tokenizer, ex, full)
    if not spans:
        return prompt, completion, [1.0] * len(completion)
    first = spans[0][0]
    weights = [0.0] * (len(full) - first)
    for start, end in [*spans, (len(prompt), len(full))]:
        weights[start - first : end - first] = [1.0] * (end - start)
    return full[:first], full[first:], weights


def check_length(ex: Example, prompt_len: int, completion_len: int, max_len: int | None) -> None:
    if max_len is None:
        return
    if prompt_len >= max_len:
        raise example_error(
            ex, "prompt", f"prompt is {prompt_len} tokens, longer than the model's context of {max_len}"
        )
    if prompt_len + completion_len > max_len:
        raise example_error(
            ex,
            "completion",
            f"prompt + completion is {prompt_len + completion_len} tokens, longer than the context of {max_len}",
        )
