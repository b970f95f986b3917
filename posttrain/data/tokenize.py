"""Prompts and demonstrations to token ids, with the chat template when data has messages.

For message-shaped data the completion's tokens are found by rendering the
conversation twice, without and with the final assistant turn, and taking the
difference. This works with any chat template, including those without
``{% generation %}`` tags (whose assistant-only masks come back all zeros in
other frameworks), and fails loudly when a template rewrites earlier turns.
"""

from __future__ import annotations

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from posttrain.errors import DataError
from posttrain.tasks.base import Example, Prompt


def _split_source(ex: Example) -> tuple[str | None, int | None]:
    if not ex.source:
        return None, None
    file, _, line = ex.source.rpartition(":")
    return (file, int(line)) if line.isdigit() else (ex.source, None)


def example_error(ex: Example, field: str, message: str) -> DataError:
    file, line = _split_source(ex)
    return DataError(message, file=file or f"example {ex.id}", line=line, field=field)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> list[int]:
    if isinstance(prompt, str):
        return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_example(tokenizer: PreTrainedTokenizerBase, ex: Example, max_len: int | None) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids ending in eos) of a demonstration."""
    if ex.completion is None:
        raise example_error(ex, "completion", "this row has no demonstration to train on")
    eos = tokenizer.eos_token_id
    if isinstance(ex.prompt, str):
        prompt = encode_prompt(tokenizer, ex.prompt)
        completion = list(tokenizer(ex.completion, add_special_tokens=False)["input_ids"])
    else:
        prompt = encode_prompt(tokenizer, ex.prompt)
        messages = list(ex.prompt) + [{"role": "assistant", "content": ex.completion}]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        full = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if full[: len(prompt)] != prompt:
            raise example_error(
                ex, "messages", "the chat template renders earlier turns differently once the reply is added"
            )
        completion = full[len(prompt) :]
    if eos is not None and eos not in completion:
        completion.append(int(eos))
    check_length(ex, len(prompt), len(completion), max_len)
    return prompt, completion


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
