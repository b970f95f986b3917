"""Row shapes of common benchmarks, read into the plain ``Example`` record.

``data.format`` picks how the jsonl task reads a row (file reading, splits and
error reporting stay in ``posttrain.tasks.jsonl``):

- ``plain``: ``{prompt, answer}``, ``{prompt, completion}`` or ``{messages}``.
- ``gsm8k``: ``{question, answer}`` where ``answer`` is the worked solution ending
  in ``#### 72``. Gold = the text after the last ``####`` (thousands commas
  dropped); demonstration = the solution without its ``<<48/2=24>>`` calculator
  annotations, which a model never sees at test time.
- ``math``: ``{problem, solution}`` as in Hendrycks MATH, optionally with
  ``answer``. Gold = ``answer`` when given, else the last ``\\boxed{...}`` of the
  solution (braces matched, so ``\\boxed{\\frac{1}{2}}`` is read whole);
  demonstration = the solution.
- ``mc``: ``{question, choices, answer}``. ``choices`` is a list (lettered A, B,
  ... in order), a mapping letter -> text, or ARC's ``{label: [...], text: [...]}``;
  the answer is a letter or a 0-based index (MMLU), in ``answer`` or ARC's
  ``answerKey``. Prompt = question, lettered options and ``Answer:``; gold = the
  letter.

With ``data.verifier: auto`` each format brings its checker: ``last_number`` for
plain and gsm8k, ``math_verify`` for math, ``choice`` for mc.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from typing import Any

from posttrain.tasks.base import Prompt
from posttrain.tasks.jsonl import _answer, _parse_row, _RowError, _string, _type_name
from posttrain.tasks.verifiers import Verifier

RowParser = Callable[[Any, Verifier], tuple[Prompt, str | None, str | None]]

DEFAULT_VERIFIER = {"plain": "last_number", "gsm8k": "last_number", "math": "math_verify", "mc": "choice"}

_CALCULATOR = re.compile(r"<<[^<>]*>>")
_LETTERS = string.ascii_uppercase


def resolve_verifier(verifier: str, format: str) -> str:
    """The verifier a config names, with ``auto`` replaced by the format's own."""
    return DEFAULT_VERIFIER.get(format, "last_number") if verifier == "auto" else verifier


def _object(row: Any, fields: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise _RowError(None, f"expected a JSON object with {fields}, got {_type_name(row)}")
    return row


def _required(row: dict[str, Any], key: str, shape: str) -> str:
    if key not in row:
        raise _RowError(key, f"missing field {key!r} (expected {shape})")
    return _string(row, key)


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces matched."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0 or text[start:i].strip() not in ("\\boxed", "\\fbox"):
        # "\boxed 5": the argument is the next token
        m = re.match(r"\\(?:boxed|fbox)\s+(\S+)", text[start:])
        return m.group(1).rstrip(".$") if m else None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j].strip()
    return None  # unbalanced: no answer rather than half of one


def parse_gsm8k(row: Any, verifier: Verifier) -> tuple[Prompt, str | None, str | None]:
    shape = "{question, answer} with the answer ending in '#### <number>'"
    row = _object(row, "question and answer")
    question = _required(row, "question", shape)
    solution = _required(row, "answer", shape)
    if "####" not in solution:
        raise _RowError("answer", "no '#### <answer>' line in the GSM8K solution")
    gold = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not gold:
        raise _RowError("answer", "nothing after '####' in the GSM8K solution")
    completion = _CALCULATOR.sub("", solution).strip()
    return question.rstrip() + "\n", gold, completion


def parse_math(row: Any, verifier: Verifier) -> tuple[Prompt, str | None, str | None]:
    shape = "{problem, solution} with a \\boxed{} answer, or an 'answer' field"
    row = _object(row, "problem and solution")
    problem = _required(row, "problem", shape)
    solution = _string(row, "solution") if "solution" in row else None
    gold = _answer(row)
    if gold is None and solution is not None:
        gold = last_boxed(solution)
        if gold is None:
            raise _RowError("solution", "no \\boxed{...} answer in the solution (and no 'answer' field)")
    if gold is None:
        raise _RowError("answer", f"missing field 'answer' (expected {shape})")
    return problem.rstrip() + "\n", gold, solution


def _choices(row: dict[str, Any]) -> list[tuple[str, str]]:
    """(letter, text) pairs of the row's options."""
    value = row.get("choices", row.get("options"))
    if value is None:
        raise _RowError("choices", "missing field 'choices' (a list of options)")
    if isinstance(value, dict) and set(value) == {"label", "text"}:  # ARC
        labels, texts = value["label"], value["text"]
        if not (isinstance(labels, list) and isinstance(texts, list) and len(labels) == len(texts)):
            raise _RowError("choices", "expected 'label' and 'text' lists of the same length")
        pairs = list(zip(labels, texts))
    elif isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list):
        if len(value) > len(_LETTERS):
            raise _RowError("choices", f"at most {len(_LETTERS)} options, got {len(value)}")
        pairs = list(zip(_LETTERS, value))
    else:
        raise _RowError("choices", f"expected a list or a mapping of options, got {_type_name(value)}")
    if len(pairs) < 2:
        raise _RowError("choices", "a multiple-choice question needs at least two options")
    for i, (label, text) in enumerate(pairs):
        if not isinstance(label, str) or not isinstance(text, str):
            raise _RowError(f"choices[{i}]", "expected a letter and a string for each option")
    return [(str(label).strip().upper(), str(text)) for label, text in pairs]


def _gold_letter(row: dict[str, Any], letters: list[str]) -> str:
    key = "answer" if "answer" in row else "answerKey"
    if key not in row:
        raise _RowError("answer", "missing field 'answer' (a letter or a 0-based index)")
    value = row[key]
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < len(letters):
            raise _RowError(key, f"index {value} is out of range for {len(letters)} options")
        return letters[value]
    if isinstance(value, str) and value.strip().strip("()").upper() in letters:
        return value.strip().strip("()").upper()
    raise _RowError(key, f"expected one of {', '.join(letters)} or a 0-based index, got {value!r}")


def parse_mc(row: Any, verifier: Verifier) -> tuple[Prompt, str | None, str | None]:
    row = _object(row, "question, choices and answer")
    question = _required(row, "question", "{question, choices, answer}")
    options = _choices(row)
    gold = _gold_letter(row, [letter for letter, _ in options])
    lines = [question.rstrip(), *(f"{letter}. {text}" for letter, text in options), "Answer:"]
    return "\n".join(lines), gold, None


ROW_PARSERS: dict[str, RowParser] = {"plain": _parse_row, "gsm8k": parse_gsm8k, "math": parse_math, "mc": parse_mc}


def row_parser(format: str) -> RowParser:
    if format not in ROW_PARSERS:
        from posttrain.errors import ConfigError

        choices = ", ".join(sorted(ROW_PARSERS))
        raise ConfigError(f"unknown data format {format!r} (expected one of {choices})", field="data.format")
    return ROW_PARSERS[format]
