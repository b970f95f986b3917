r"""Preference data: ``{prompt, chosen, rejected}`` rows from JSONL, Parquet or a datasets directory.

Four row shapes, which may be mixed within a file::

    {"prompt": "2+2=?", "chosen": "#4", "rejected": "#5"}
    {"prompt": [{"role": "user", "content": "2+2=?"}],
     "chosen": [{"role": "assistant", "content": "#4"}],
     "rejected": [{"role": "assistant", "content": "#5"}]}
    {"chosen": "\n\nHuman: 2+2=?\n\nAssistant: 4", "rejected": "\n\nHuman: 2+2=?\n\nAssistant: 5"}
    {"chosen": [{"role": "user", ...}, {"role": "assistant", "content": "4"}],
     "rejected": [{"role": "user", ...}, {"role": "assistant", "content": "5"}]}

The last two have an implicit prompt (HH-RLHF's shape). For strings it is the
longest common prefix of chosen and rejected that ends at a ``"\n\nAssistant:"``
turn boundary, the text up to and including the last such marker they share; the
replies are what follows it (their leading space included). For conversations it
is the messages the two share, and each must go on with exactly one assistant
message.

A row with a message list anywhere is rendered with the tokenizer's chat template
(a plain-text prompt then becomes one user message); a row of strings is plain
text. Files are read, rows checked and the held-out split chosen by the same helpers
as the ``jsonl`` task (``posttrain.tasks.rows``), so a bad row stops the run with one
line naming its file, line and field. The held-out split is ``data.eval_path`` when
given, else the ``test`` split of a ``DatasetDict``, else a stable hash of each prompt.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from posttrain.data.pairs import EncodedPair
from posttrain.data.tokenize import LengthCount, Limit, Truncation, encode_example, fit_pair
from posttrain.errors import DataError
from posttrain.tasks.base import Example, Message, Prompt, Split
from posttrain.tasks.rows import (
    RowError,
    Rows,
    load_splits,
    message_list,
    parse_rows,
    reply_field,
    string_field,
    type_name,
)

SHAPE = "{prompt, chosen, rejected}"
SHAPES = "{prompt, chosen, rejected} or {chosen, rejected}"  # with an implicit prompt
TURN = "\n\nAssistant:"  # where an implicit prompt of string rows ends


@dataclass(frozen=True)
class PreferencePair:
    id: str
    prompt: Prompt  # text, or messages ending before the assistant's reply
    chosen: str  # the preferred reply
    rejected: str
    source: str  # "file:line" of the row, for error messages


def _implicit_text(chosen: str, rejected: str) -> tuple[Prompt, str, str]:
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(TURN)
    if cut < 0:
        raise RowError(
            "chosen",
            f"no 'prompt' field, and chosen and rejected share no prefix ending in {TURN!r} to take as the prompt",
        )
    end = cut + len(TURN)
    return chosen[:end], chosen[end:], rejected[end:]


def _implicit_messages(chosen: list[Message], rejected: list[Message]) -> tuple[Prompt, str, str]:
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise RowError(
            "chosen", "no 'prompt' field, and chosen and rejected share no opening message to take as the prompt"
        )
    for key, messages in (("chosen", chosen), ("rejected", rejected)):
        if len(messages) != n + 1:
            raise RowError(
                key,
                f"expected one assistant reply after the {n} messages chosen and rejected share, got {len(messages) - n}",
            )
        if messages[n]["role"] != "assistant":
            raise RowError(f"{key}[{n}].role", f"expected role 'assistant', got {messages[n]['role']!r}")
    return chosen[:n], chosen[n]["content"], rejected[n]["content"]


def _implicit_pair(row: dict[str, Any]) -> tuple[Prompt, str, str]:
    """(prompt, chosen reply, rejected reply) of a row without a prompt (see the module docstring)."""
    for key in ("chosen", "rejected"):
        if key not in row:
            raise RowError(key, f"missing field {key!r} (expected {SHAPES})")
    chosen, rejected = row["chosen"], row["rejected"]
    if isinstance(chosen, list) or isinstance(rejected, list):
        for key in ("chosen", "rejected"):
            if not isinstance(row[key], list):
                raise RowError(key, f"expected a list of messages like the other reply, got {type_name(row[key])}")
        return _implicit_messages(message_list(chosen, "chosen"), message_list(rejected, "rejected"))
    return _implicit_text(string_field(row, "chosen"), string_field(row, "rejected"))


def _parse_pair(row: Any) -> tuple[Prompt, str, str]:
    if not isinstance(row, dict):
        raise RowError(None, f"expected a JSON object, got {type_name(row)}")
    if "prompt" not in row:
        return _implicit_pair(row)
    prompt: Prompt = row["prompt"] if isinstance(row["prompt"], list) else string_field(row, "prompt")
    if isinstance(prompt, list):
        prompt = message_list(prompt, "prompt")
    chosen, chat_c = reply_field(row, "chosen", SHAPE)
    rejected, chat_r = reply_field(row, "rejected", SHAPE)
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


def encode_pair(tokenizer: PreTrainedTokenizerBase, pair: PreferencePair, max_len: int | Limit | None) -> EncodedPair:
    """(prompt ids, chosen ids, rejected ids), each reply ending in eos, as SFT encodes demonstrations.

    Over ``max_len`` it raises ``TooLong`` naming the reply; ``fit_pair`` cuts or drops instead.
    """
    replies = []
    for key in ("chosen", "rejected"):
        ex = Example(id=pair.id, prompt=pair.prompt, completion=getattr(pair, key), source=pair.source)
        try:
            prompt, reply = encode_example(tokenizer, ex, None)
        except DataError as e:
            if e.field != "completion":
                raise
            raise DataError(e.message.replace("completion", key), file=e.file, line=e.line, field=key) from None
        replies.append(reply)
    encoded = (prompt, replies[0], replies[1])
    fit_pair(_example(pair), encoded, max_len)  # raises when it does not fit
    return encoded


def _example(pair: PreferencePair) -> Example:
    return Example(id=pair.id, prompt=pair.prompt, source=pair.source)


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[PreferencePair],
    max_len: int | Limit | None,
    path: str,
    truncation: Truncation = "error",
    count: LengthCount | None = None,
) -> list[EncodedPair]:
    """Every pair encoded and fitted within ``max_len`` as ``data.truncation`` says, counted in ``count``."""
    if not pairs:
        raise DataError(f"no preference pairs to train on (rows need {SHAPE})", file=path)
    out = []
    for p in pairs:
        whole = encode_pair(tokenizer, p, None)
        fitted = fit_pair(_example(p), whole, max_len, truncation, tokenizer.bos_token_id)
        if count is not None:
            count.add(whole, fitted)
        if fitted is not None:
            out.append(fitted)
    if not out:
        summary = count.summary("pairs") if count is not None else f"all {len(pairs)} are too long"
        raise DataError(f"no preference pair left to train on: {summary}", file=path, field="data.truncation")
    return out


def distinct_pairs(pairs: list[PreferencePair], path: str) -> list[PreferencePair]:
    """``pairs`` without those whose chosen and rejected replies are the same text (both empty included).

    Such a pair has DPO loss ln 2 and zero gradient whatever the model: it teaches nothing and
    dilutes its step. A few in a file are dropped and counted; a file of nothing else is refused.
    """
    same = [p for p in pairs if p.chosen == p.rejected]
    if not same:
        return pairs
    if len(same) == len(pairs):
        file, _, line = same[0].source.rpartition(":")
        raise DataError(
            f"all {len(pairs)} preference pairs have identical chosen and rejected replies: no preference to learn",
            file=file if line.isdigit() else same[0].source,
            line=int(line) if line.isdigit() else None,
            field="rejected",
        )
    from posttrain.train.metrics import console  # the training output's console (stderr)

    console.print(
        f"{path}: dropped {len(same)} of {len(pairs)} preference pairs whose chosen and rejected replies are "
        f"identical (first: {same[0].source}); they give loss ln 2 and no gradient",
        markup=False, highlight=False, soft_wrap=True,
    )  # fmt: skip
    return [p for p in pairs if p.chosen != p.rejected]
