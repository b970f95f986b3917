"""Prompts and demonstrations to ids, including message rows through the chat template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from posttrain.data.batch import collate, per_token
from posttrain.data.tokenize import Limit, TooLong, encode_demo, encode_example, encode_prompt, fit_demo
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


def test_too_long_names_train_max_seq_len_and_the_models_context(tiny_dir: Path) -> None:
    """A ``Limit`` (what the recipes pass) says which of the two applies, and shows the other."""
    tok = load_tokenizer(tiny_dir)
    ex = Example(id="x", prompt="1" * 10, completion="2" * 60, source="data.jsonl:7")
    with pytest.raises(TooLong) as err:
        encode_example(tok, ex, Limit.of(128, 64))
    assert str(err.value) == (
        "data.jsonl:7: completion: prompt + completion is 71 tokens, longer than the model's context of 64 "
        "(train.max_seq_len is 128); data.truncation: left, right or drop keeps going without it"
    )
    with pytest.raises(TooLong) as err:
        encode_demo(tok, ex, Limit.of(32, 32, 64))
    assert "longer than train.max_seq_len=32 (the model's context is 64)" in str(err.value)


def test_a_demo_encoded_whole_then_fitted_equals_the_checked_encoding(tiny_dir: Path) -> None:
    tok = load_tokenizer(tiny_dir)
    ex = Example(id="m", prompt=CONVERSATION, completion="#7", train_prompt_replies=True)
    whole = encode_demo(tok, ex, None)
    assert fit_demo(ex, whole, 64, "drop") is whole and whole == encode_demo(tok, ex, 64)


# --- every assistant turn a target; plain language modelling --------------------------

CONVERSATION = [
    {"role": "user", "content": "1+2=?"},
    {"role": "assistant", "content": "#3"},
    {"role": "user", "content": "and +4?"},
]


def trained_text(tok: Any, completion: list[int], weights: list[float]) -> list[str]:
    """The decoded runs of trained tokens, in order."""
    runs: list[list[int]] = []
    for i, (t, w) in enumerate(zip(completion, weights)):
        if w:
            if i == 0 or not weights[i - 1]:
                runs.append([])
            runs[-1].append(t)
    return [tok.decode(r, skip_special_tokens=False) for r in runs]


def test_every_assistant_turn_is_a_target(tiny_dir: Path) -> None:
    tok = load_tokenizer(tiny_dir)
    ex = Example(id="m", prompt=CONVERSATION, completion="#7", train_prompt_replies=True)
    prompt, completion, weights = encode_demo(tok, ex, None)
    assert (
        tok.decode(prompt, skip_special_tokens=False) == "<|user|>1+2=?<|assistant|>"
    )  # (jinja's trim_blocks eats the \n)
    assert len(weights) == len(completion)
    # each reply with its end-of-turn tokens; the user turn between them is context
    assert trained_text(tok, completion, weights) == ["#3</s>", "#7</s>"]
    # the same tokens as the whole conversation, and the last reply as the last-turn encoding has it
    last_prompt, last_completion = encode_example(tok, ex, None)
    assert prompt + completion == last_prompt + last_completion
    assert completion[-len(last_completion) :] == last_completion and weights[-len(last_completion) :] == [1.0] * len(
        last_completion
    )


def test_only_the_last_turn_without_the_flag(tiny_dir: Path) -> None:
    tok = load_tokenizer(tiny_dir)
    ex = Example(id="m", prompt=CONVERSATION, completion="#7")
    prompt, completion, weights = encode_demo(tok, ex, None)
    assert (prompt, completion) == encode_example(tok, ex, None) and weights == [1.0] * len(completion)


def test_a_template_that_rewrites_earlier_replies_is_named(tiny_dir: Path) -> None:
    tok = load_tokenizer(tiny_dir)
    # renders every reply but the last as "..." (as templates that drop earlier reasoning do)
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>"
        "{% if m['role'] == 'assistant' and not loop.last %}...{% else %}{{ m['content'] }}{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    ex = Example(id="m", prompt=CONVERSATION, completion="#7", source="chat.jsonl:4", train_prompt_replies=True)
    encode_example(tok, ex, None)  # the last reply alone is still well defined
    with pytest.raises(DataError) as err:
        encode_demo(tok, ex, None)
    assert str(err.value) == (
        "chat.jsonl:4: messages: the chat template renders turn 1 differently once later turns are added, so its "
        "tokens cannot be told apart: train on the last reply only (data.train_on: last_assistant)"
    )


def test_a_text_row_trains_every_token_after_bos(tiny_dir: Path) -> None:
    tok = load_tokenizer(tiny_dir)
    prompt, completion = encode_example(tok, Example(id="t", prompt="", completion="ab"), 64)
    assert prompt == [tok.bos_token_id]
    assert completion == tok("ab", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with pytest.raises(DataError, match="text: the text is too short"):
        tok_no_bos = load_tokenizer(tiny_dir)
        tok_no_bos.bos_token = None
        encode_example(tok_no_bos, Example(id="t", prompt="", completion=""), 64)


def test_weights_mask_a_collated_batch(tiny_dir: Path) -> None:
    """How SFT reads the weights: collate as ever, then multiply the response mask by them in place."""
    tok = load_tokenizer(tiny_dir)
    demos = [
        encode_demo(tok, Example(id="m", prompt=CONVERSATION, completion="#7", train_prompt_replies=True), None),
        encode_demo(tok, Example(id="s", prompt="1+1=?\n", completion="#2"), None),
    ]
    batch = collate([p for p, _, _ in demos], [c for _, c, _ in demos], int(tok.pad_token_id))
    batch.response_mask = batch.response_mask * per_token(
        [w for _, _, w in demos], [len(p) for p, _, _ in demos], batch.response_mask.shape[1]
    )
    targets = batch.input_ids[:, 1:]
    trained = [tok.decode(targets[i][batch.response_mask[i] > 0].tolist(), skip_special_tokens=False) for i in (0, 1)]
    assert trained == ["#3</s>#7</s>", "#2</s>"]
