"""Prompts and demonstrations to ids, including message rows through the chat template."""

from __future__ import annotations

from pathlib import Path

import pytest

from posttrain.data.tokenize import encode_example, encode_prompt
from posttrain.errors import DataError
from posttrain.models.io import load_tokenizer
from posttrain.tasks.base import Example


def test_text_demonstration_ends_with_eos(tiny_dir: Path) -> None:
    tok = load_tokenizer(tiny_dir)
    prompt, completion = encode_example(tok, Example(id="a", prompt="1+2=?\n", completion="#3"), 64)
    assert tok.decode(prompt) == "1+2=?\n"
    assert completion == tok("#3", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_messages_use_the_chat_template(tiny_dir: Path) -> None:
    tok = load_tokenizer(tiny_dir)
    messages = [{"role": "user", "content": "1+2=?"}]
    ex = Example(id="m", prompt=messages, completion="#3")
    prompt, completion = encode_example(tok, ex, 64)
    assert prompt == encode_prompt(tok, messages)
    assert tok.decode(prompt).endswith("<|assistant|>")  # the generation prompt is context, not target
    # the reply and the template's end-of-turn token are the only scored tokens
    assert tok.decode(completion, skip_special_tokens=False).startswith("#3</s>")
    assert tok.eos_token_id in completion


def test_too_long_names_the_row(tiny_dir: Path) -> None:
    tok = load_tokenizer(tiny_dir)
    ex = Example(id="x", prompt="1" * 10, completion="2" * 60, source="data.jsonl:7")
    with pytest.raises(DataError) as err:
        encode_example(tok, ex, 64)
    assert str(err.value) == "data.jsonl:7: completion: prompt + completion is 71 tokens, longer than the context of 64"
