"""Preference data: ``{prompt, chosen, rejected}`` rows from JSONL, Parquet or a datasets directory.

Two row shapes, which may be mixed within a file::

    {"prompt": "2+2=?", "chosen": "#4", "rejected": "#5"}
    {"prompt": [{"role": "user", "content": "2+2=?"}],
     "chosen": [{"role": "assistant", "content": "#4"}],
     "rejected": [{"role": "assistant", "content": "#5"}]}

A row with a message list anywhere is rendered with the tokenizer's chat template
(a plain-text prompt then becomes one user message); a row of strings is plain
text. Files are read, rows checked and the held-out split chosen by the same helpers
as the ``jsonl`` task (``posttrain.tasks.rows``), so a bad row stops the run with one
line naming its file, line and field. The held-out split is ``data.eval_path`` when
given, else the ``test`` split of a ``DatasetDict``, else a stable hash of each prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from posttrain.data.pairs import EncodedPair
from posttrain.data.tokenize import encode_example
from posttrain.errors import DataError
from posttrain.tasks.base import Example, Prompt, Split
from posttrain.tasks.rows import RowError, Rows, load_splits, message_list, parse_rows, string_field, type_name

SHAPE = "{prompt, chosen, rejected}"


@dataclass(frozen=True)
class PreferencePair:
    id: str
    prompt: Prompt  # text, or messages ending before the assistant's reply
    chosen: str  # the preferred reply
    rejected: str
    source: str  # "file:line" of the row, for error messages


def _response(row: dict[str, Any], key: str) -> tuple[str, bool]:
    """(reply text, whether the row gave it as messages)."""
    if key not in row:
        raise RowError(key, f"missing field {key!r} (expected {SHAPE})")
    value = row[key]
    if isinstance(value, str):
        return value, False
    if not isinstance(value, list):
        raise RowError(key, f"expected a string or a list of messages, got {type_name(value)}")
    messages = message_list(value, key)
    if len(messages) != 1:
        raise RowError(key, f"expected the assistant's reply as one message, got {len(messages)} messages")
    if messages[0]["role"] != "assistant":
        raise RowError(f"{key}[0].role", f"expected role 'assistant', got {messages[0]['role']!r}")
    return messages[0]["content"], True


def _parse_pair(row: Any) -> tuple[Prompt, str, str]:
    if not isinstance(row, dict):
        raise RowError(None, f"expected a JSON object, got {type_name(row)}")
    if "prompt" not in row:
        raise RowError("prompt", f"missing field 'prompt' (expected {SHAPE})")
    prompt: Prompt = row["prompt"] if isinstance(row["prompt"], list) else string_field(row, "prompt")
    if isinstance(prompt, list):
        prompt = message_list(prompt, "prompt")
    chosen, chat_c = _response(row, "chosen")
    rejected, chat_r = _response(row, "rejected")
    if isinstance(prompt, str) and (chat_c or chat_r):
        prompt = [{"role": "user", "content": prompt}]
    return prompt, chosen, rejected


def _pairs(rows: Rows) -> list[PreferencePair]:
    return [
        PreferencePair(f"{rows.id_prefix}:{line}", prompt, chosen, rejected, f"{rows.label}:{line}")
        for line, (prompt, chosen, rejected) in parse_rows(rows, _parse_pair)
    ]


def load_preferences(
    path: str, eval_path: str | None = None, test_fraction: float = 0.1
) -> dict[Split, list[PreferencePair]]:
    """Every row of ``path`` checked and split into ``train`` and ``test``."""
    return load_splits(path, eval_path, test_fraction, _pairs, lambda p: p.prompt)


def encode_pair(tokenizer: PreTrainedTokenizerBase, pair: PreferencePair, max_len: int | None) -> EncodedPair:
    """(prompt ids, chosen ids, rejected ids), each reply ending in eos, as SFT encodes demonstrations."""
    replies = []
    for key in ("chosen", "rejected"):
        ex = Example(id=pair.id, prompt=pair.prompt, completion=getattr(pair, key), source=pair.source)
        try:
            prompt, reply = encode_example(tokenizer, ex, max_len)
        except DataError as e:
            if e.field != "completion":
                raise
            raise DataError(e.message.replace("completion", key), file=e.file, line=e.line, field=key) from None
        replies.append(reply)
    return prompt, replies[0], replies[1]


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase, pairs: list[PreferencePair], max_len: int | None, path: str
) -> list[EncodedPair]:
    if not pairs:
        raise DataError(f"no preference pairs to train on (rows need {SHAPE})", file=path)
    return [encode_pair(tokenizer, p, max_len) for p in pairs]
