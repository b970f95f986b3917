"""Which text of a row is compared, and the normalisation every filter shares.

Decontamination normalises as GPT-3 did (Brown et al. 2020, appendix C): lowercase,
punctuation stripped, split on whitespace; dedup and n-gram overlap then work on the
word lists. The compared text of a row is its question-like field, chosen from the row
shapes posttrain reads (``posttrain.tasks.formats``): ``prompt`` (a string or a message
list), ``question`` (gsm8k, mc), ``problem`` (math), ``messages`` (every turn's
content), ``text``, ``instruction``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any

AUTO_FIELDS = ("prompt", "question", "problem", "messages", "text", "instruction")

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)


class FieldMissing(Exception):
    """A row holds none of the fields asked for; the caller names its file and line."""


def field_list(fields: str) -> tuple[str, ...] | None:
    """``datagen.fields`` as a tuple of names; ``None`` for auto."""
    if fields.strip() == "auto":
        return None
    return tuple(f.strip() for f in fields.split(",") if f.strip())


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # a conversation: each turn's content, in order
        return "\n".join(_value_text(m.get("content", "") if isinstance(m, dict) else m) for m in value)
    if isinstance(value, dict) and "content" in value:
        return _value_text(value["content"])
    return "" if value is None else str(value)


def row_text(row: Any, fields: tuple[str, ...] | None) -> str:
    """The text of ``row`` that is compared: the named fields joined by newlines, or the auto field."""
    if not isinstance(row, dict):
        raise FieldMissing(f"expected a JSON object, got {type(row).__name__}")
    if fields is None:
        for name in AUTO_FIELDS:
            if name in row:
                return _value_text(row[name])
        raise FieldMissing(f"none of the fields {', '.join(AUTO_FIELDS)} (set datagen.fields)")
    present = [f for f in fields if f in row]
    if not present:
        raise FieldMissing(f"none of the fields {', '.join(fields)} named by datagen.fields")
    return "\n".join(_value_text(row[f]) for f in present)


def words(text: str) -> list[str]:
    """Lowercased words with punctuation stripped (GPT-3's decontamination normalisation)."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _PUNCT.sub(" ", text).split()


def text_hash(text: str) -> str:
    """A stable digest of the normalised words: equal for texts that differ only in case, punctuation, spacing."""
    return hashlib.blake2b(" ".join(words(text)).encode(), digest_size=16).hexdigest()


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    """Every contiguous ``n``-gram of ``tokens``; a shorter list is one gram of its own length (if non-empty)."""
    if len(tokens) < n:
        return [tuple(tokens)] if tokens else []
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
