"""Row shapes of common benchmarks, read into the plain ``Example`` record.

``data.format`` picks how the jsonl task reads a row (file reading, splits and
error reporting are ``posttrain.tasks.rows``'s):

- ``plain``: ``{prompt, answer}``, ``{prompt, completion}``, ``{messages}`` or
  ``{text}``. ``prompt`` and ``completion`` may be conversations (TRL's
  conversational prompt-completion shape): ``prompt`` a message list (or a string,
  then one user turn), ``completion`` one assistant message. A ``{messages}`` row's
  reply is its last message; its earlier assistant turns are SFT targets too under
  ``data.train_on: all_assistant`` (``Example.train_prompt_replies``). A ``{text}``
  row is plain language modelling: an empty prompt and the text as the completion.
- ``gsm8k``: ``{question, answer}`` where ``answer`` is the worked solution ending
  in ``#### 72``. Gold = the text after the last ``####`` (thousands commas
  dropped); demonstration = the solution without its ``<<48/2=24>>`` calculator
  annotations, which a model never sees at test time.
- ``math``: ``{problem, solution}`` as in Hendrycks MATH, optionally with
  ``answer``. Gold = ``answer`` when given, else the last ``\\boxed{...}`` of the
  solution (braces matched, so ``\\boxed{\\frac{1}{2}}`` is read whole);
  demonstration = the solution.
- ``mc``: ``{question, choices, answer}``. ``choices`` is a list (lettered A, B,
  ... in order), a mapping letter -> text, ARC's ``{label: [...], text: [...]}``, or
  one string of labelled options (``"A) 12 B) 15"``, ``"(a) 12, (b) 15"``, one a line);
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

from posttrain.tasks.base import Message, Prompt
from posttrain.tasks.rows import RowError, answer_field, message_list, reply_field, string_field, type_name
from posttrain.tasks.verifiers import Verifier

RowParser = Callable[[Any, Verifier], tuple[Prompt, str | None, str | None]]

SHAPES = "{prompt, answer}, {prompt, completion}, {messages} or {text}"
DEFAULT_VERIFIER = {"plain": "last_number", "gsm8k": "last_number", "math": "math_verify", "mc": "choice"}

_CALCULATOR = re.compile(r"<<[^<>]*>>")
_LETTERS = string.ascii_uppercase


def resolve_verifier(verifier: str, format: str) -> str:
    """The verifier a config names, with ``auto`` replaced by the format's own."""
    return DEFAULT_VERIFIER.get(format, "last_number") if verifier == "auto" else verifier


def _messages(row: dict[str, Any]) -> tuple[list[Message], str]:
    """(prompt messages, assistant reply) of a ``messages`` row."""
    value = row["messages"]
    if isinstance(value, list) and len(value) < 2:
        raise RowError("messages", "expected at least one message before the assistant's reply")
    messages = message_list(value, "messages")
    last = messages[-1]["role"]
    if last != "assistant":
        where = f"messages[{len(messages) - 1}].role"
        raise RowError(where, f"the last message must be the assistant's reply, got role {last!r}")
    return messages[:-1], messages[-1]["content"]


def parse_plain(row: Any, verifier: Verifier) -> tuple[Prompt, str | None, str | None]:
    """(prompt, answer, completion) of one plain row, or a ``RowError``."""
    if not isinstance(row, dict):
        raise RowError(None, f"expected a JSON object, got {type_name(row)}")
    prompt: Prompt
    completion: str | None
    if "messages" in row:
        if "prompt" in row:
            raise RowError("prompt", "a row has either 'prompt' or 'messages', not both")
        prompt, completion = _messages(row)
    elif "prompt" in row:
        if isinstance(row["prompt"], list):
            prompt = message_list(row["prompt"], "prompt")
        else:
            prompt = string_field(row, "prompt")
        if "completion" in row:
            completion, chat = reply_field(row, "completion", SHAPES)
            if chat and isinstance(prompt, str):
                prompt = [{"role": "user", "content": prompt}]
        elif "answer" in row:
            completion = None
        else:
            raise RowError("answer", f"missing field 'answer' (expected {SHAPES})")
    elif "text" in row:
        text = string_field(row, "text")
        if not text.strip():
            raise RowError("text", "the text is empty")
        return "", None, text  # language modelling: nothing to ask, nothing to verify
    else:
        raise RowError("prompt", f"missing field 'prompt' (expected {SHAPES})")
    answer = answer_field(row)
    if answer is None and completion is not None:
        # a demonstration's own final answer, so its prompt can also be scored
        answer = verifier.extract(completion)
    return prompt, answer, completion


def _object(row: Any, fields: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise RowError(None, f"expected a JSON object with {fields}, got {type_name(row)}")
    return row


def _required(row: dict[str, Any], key: str, shape: str) -> str:
    if key not in row:
        raise RowError(key, f"missing field {key!r} (expected {shape})")
    return string_field(row, key)


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
        raise RowError("answer", "no '#### <answer>' line in the GSM8K solution")
    gold = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not gold:
        raise RowError("answer", "nothing after '####' in the GSM8K solution")
    completion = _CALCULATOR.sub("", solution).strip()
    return question.rstrip() + "\n", gold, completion


def parse_math(row: Any, verifier: Verifier) -> tuple[Prompt, str | None, str | None]:
    shape = "{problem, solution} with a \\boxed{} answer, or an 'answer' field"
    row = _object(row, "problem and solution")
    problem = _required(row, "problem", shape)
    solution = string_field(row, "solution") if "solution" in row else None
    gold = answer_field(row)
    if gold is None and solution is not None:
        gold = last_boxed(solution)
        if gold is None:
            raise RowError("solution", "no \\boxed{...} answer in the solution (and no 'answer' field)")
    if gold is None:
        raise RowError("answer", f"missing field 'answer' (expected {shape})")
    return problem.rstrip() + "\n", gold, solution


def _choices(row: dict[str, Any]) -> list[tuple[str, str]]:
    """(letter, text) pairs of the row's options."""
    value = row.get("choices", row.get("options"))
    if value is None:
        raise RowError("choices", "missing field 'choices' (a list of options)")
    if isinstance(value, dict) and set(value) == {"label", "text"}:  # ARC
        labels, texts = value["label"], value["text"]
        if not (isinstance(labels, list) and isinstance(texts, list) and len(labels) == len(texts)):
            raise RowError("choices", "expected 'label' and 'text' lists of the same length")
        pairs = list(zip(labels, texts))
    elif isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, str):
        pairs = _split_options(value)
        if len(pairs) < 2:
            raise RowError("choices", "expected labelled options in the string, such as 'A) 12 B) 15'")
    elif isinstance(value, list):
        if len(value) > len(_LETTERS):
            raise RowError("choices", f"at most {len(_LETTERS)} options, got {len(value)}")
        pairs = list(zip(_LETTERS, value))
    else:
        raise RowError("choices", f"expected a list or a mapping of options, got {type_name(value)}")
    if len(pairs) < 2:
        raise RowError("choices", "a multiple-choice question needs at least two options")
    for i, (label, text) in enumerate(pairs):
        if not isinstance(label, str) or not isinstance(text, str):
            raise RowError(f"choices[{i}]", "expected a letter and a string for each option")
    return [(str(label).strip().upper(), str(text)) for label, text in pairs]


def _option_label(letter: str) -> re.Pattern[str]:
    # "A)", "(A)", "A.", "A:" at the start or after whitespace or a separator
    return re.compile(rf"(?:^|(?<=[\s,;]))\(?({letter})\s?[).:]")


def _split_options(text: str) -> list[tuple[str, str]]:
    """(letter, text) of the options in one string. Labels must run A, B, C, ... in order (one case
    throughout), so a letter inside an option is not taken for the next label."""
    first = _option_label("[Aa]").search(text)
    if first is None:
        return []
    letters = _LETTERS if first.group(1).isupper() else string.ascii_lowercase
    marks = [first]
    for letter in letters[1:]:
        found = _option_label(letter).search(text, marks[-1].end())
        if found is None:
            break
        marks.append(found)
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return [(m.group(1), text[m.end() : end].strip().rstrip(",;").strip()) for m, end in zip(marks, ends)]


def _gold_letter(row: dict[str, Any], letters: list[str]) -> str:
    key = "answer" if "answer" in row else "answerKey"
    if key not in row:
        raise RowError("answer", "missing field 'answer' (a letter or a 0-based index)")
    value = row[key]
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < len(letters):
            raise RowError(key, f"index {value} is out of range for {len(letters)} options")
        return letters[value]
    if isinstance(value, str) and value.strip().strip("()").upper() in letters:
        return value.strip().strip("()").upper()
    raise RowError(key, f"expected one of {', '.join(letters)} or a 0-based index, got {value!r}")


def parse_mc(row: Any, verifier: Verifier) -> tuple[Prompt, str | None, str | None]:
    row = _object(row, "question, choices and answer")
    question = _required(row, "question", "{question, choices, answer}")
    options = _choices(row)
    gold = _gold_letter(row, [letter for letter, _ in options])
    lines = [question.rstrip(), *(f"{letter}. {text}" for letter, text in options), "Answer:"]
    return "\n".join(lines), gold, None


ROW_PARSERS: dict[str, RowParser] = {"plain": parse_plain, "gsm8k": parse_gsm8k, "math": parse_math, "mc": parse_mc}


def row_parser(format: str) -> RowParser:
    if format not in ROW_PARSERS:
        from posttrain.errors import ConfigError

        choices = ", ".join(sorted(ROW_PARSERS))
        raise ConfigError(f"unknown data format {format!r} (expected one of {choices})", field="data.format")
    return ROW_PARSERS[format]
