"""Answer checkers for tasks over user data: is this completion's final answer right?

A verifier is two pure functions: ``extract(text)`` finds the normalised final answer
in a completion (``None`` when there is none), and ``check(gold, text)`` scores a
completion against a gold answer with 1.0 or 0.0, and raises when it cannot tell
(an internal error, a gold answer that does not parse): the caller counts that
sample as unscored, never as a wrong answer. They live in ``VERIFIERS`` under
the names ``data.verifier`` accepts, so a config picks one by name and adding one is
one function pair and one dict entry.

- ``exact``: the stripped completion equals the stripped gold.
- ``last_number``: the last number in the completion equals the gold's, numerically.
- ``math_verify``: Hugging Face ``math_verify`` (LaTeX, fractions, ``\\boxed{}``,
  sets, equations), called gold first because its comparison is not symmetric.
- ``choice``: the letter of a multiple-choice answer (``(B)``, ``Answer: B``,
  ``\\boxed{B}``, or a reply that is just the letter).

Each verifier also has a ``judge(gold, text) -> (answer, score)`` for evaluation,
which also returns the answer for majority voting; it raises where ``check`` does.
``isolate`` marks verifiers that can run for unbounded time (sympy): training
rewards and evaluation run them in worker processes with a deadline
(``posttrain.rewards.isolate``), so their own signal-based timeouts stay off.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from posttrain.errors import ConfigError


@dataclass(frozen=True)
class Verifier:
    name: str
    extract: Callable[[str], str | None]  # the normalised final answer in a completion
    check: Callable[[str, str], float]  # (gold, completion) -> 1.0 or 0.0; raises when it cannot tell
    judge: Callable[[str, str], tuple[str | None, float]] | None = None  # (answer, score); may raise
    isolate: bool = False  # may hang: evaluate in a worker process with a deadline

    def judged(self, gold: str, text: str) -> tuple[str | None, float]:
        """(extracted answer, score); internal errors propagate."""
        if self.judge is not None:
            return self.judge(gold, text)
        return self.extract(text), self.check(gold, text)


# --- exact -----------------------------------------------------------------------


def exact_extract(text: str) -> str | None:
    return text.strip()


def exact_check(gold: str, text: str) -> float:
    return float(gold.strip() == text.strip())


# --- last_number -----------------------------------------------------------------

# A minus is a sign only where it cannot be a binary operator: "12-5" ends in 5, not
# -5, while "x = -5" and "(-5)" end in -5. Thousands groups must be exactly three
# digits ("1,234" is one number, "1,2,3" three). A trailing "." is punctuation: the
# fraction part needs a digit after the point.
_NUMBER = re.compile(
    r"""
    (?:(?<![\w)\]])-)?          # sign, unless it follows an operand
    (?:
        \d{1,3}(?:,\d{3}(?!\d))+  # 1,234,567
      | \d+                       # 1234
      | (?=\.\d)                  # .5
    )
    (?:\.\d+)?                  # fraction
    """,
    re.VERBOSE,
)


def _to_decimal(number: str) -> Decimal | None:
    try:
        value = Decimal(number.replace(",", ""))
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def _canonical(value: Decimal) -> str:
    """``70``, ``70.0`` and ``70.00`` all read as ``"70"``; ``-0`` as ``"0"``."""
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _last_decimal(text: str) -> Decimal | None:
    found = [m.group() for m in _NUMBER.finditer(text) if m.group() not in ("", "-")]
    return _to_decimal(found[-1]) if found else None


def last_number_extract(text: str) -> str | None:
    value = _last_decimal(text)
    return None if value is None else _canonical(value)


def last_number_check(gold: str, text: str) -> float:
    # the gold goes through the same extraction, so "#### 72" or "72 apples" work too
    want, got = _last_decimal(gold), _last_decimal(text)
    return float(want is not None and got is not None and want == got)


# --- math_verify -----------------------------------------------------------------
# Imported lazily: math_verify pulls in sympy, which the other verifiers never need.
# Timeouts are off because math_verify implements them with signal.alarm, which
# raises outside the main thread (rollout workers, data loaders): the deadline pool
# (posttrain.rewards.isolate) is the limit. Errors raise: a check that cannot tell
# leaves its sample unscored, it does not score the answer 0.


def _parse(text: str) -> list[Any]:
    from math_verify import parse

    return list(parse(text, parsing_timeout=None))


_MATH_DELIMITERS = ("$", "\\boxed", "\\(", "\\[")


# GRPO scores a group of completions against one gold answer: parse it once.
@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> tuple[Any, ...]:
    # Gold answers are usually bare LaTeX (MATH's "2\sqrt{2}"), which math_verify
    # reads in full only inside math delimiters: bare, "2\sqrt{2}" parses as 2 and
    # "\frac{3}{4}" not at all. Plain text and numbers parse the same either way.
    # an escaped dollar ("\\$12", MATH's currency answers) is text, not a math delimiter
    if not any(d in gold.replace("\\$", "") for d in _MATH_DELIMITERS):
        wrapped = _parse(f"${gold}$")
        if wrapped:
            return tuple(wrapped)
    return tuple(_parse(gold))


def math_verify_extract(text: str) -> str | None:
    try:
        parsed = _parse(text)
    except Exception:  # math_verify raises on odd input; "no answer" is the honest reading
        return None
    return str(parsed[0]) if parsed else None


def math_verify_check(gold: str, text: str) -> float:
    """1.0 or 0.0 (a completion without an answer is wrong); an error or a gold that does not parse raises."""
    return math_verify_judge(gold, text)[1]


def math_verify_judge(gold: str, text: str) -> tuple[str | None, float]:
    """(answer, score). Failures raise instead of scoring 0.

    math_verify swallows its own errors unless asked (``raise_on_error``); a gold
    answer that does not parse is a data problem, not a wrong completion.
    """
    from math_verify import parse, verify

    gold_parsed = list(_parse_gold(gold))
    if not gold_parsed:
        raise ValueError(f"the gold answer {gold!r} does not parse as mathematics")
    pred = list(parse(text, parsing_timeout=None, raise_on_error=True))  # type: ignore[arg-type]
    if not pred:
        return None, 0.0
    # gold first: math_verify unwraps equations and intervals following the gold's
    # form, so swapping the arguments changes results (gold "1" vs "2x+z=1")
    return str(pred[0]), float(verify(gold_parsed, pred, timeout_seconds=None, raise_on_error=True))


# --- choice ----------------------------------------------------------------------

# Strongest signal first: an explicit "answer" phrase or a box, then a reply that is
# only the letter, then a parenthesised letter anywhere. A bare capital elsewhere is
# too often the article "A" to count.
_CHOICE_PATTERNS = (
    re.compile(r"\\boxed\{\s*(?:\\text\{)?\s*\(?([A-Z])\)?\s*\}?\s*\}"),
    re.compile(r"(?i:answer(?:\s+is)?)\s*[:\-]?\s*\(?([A-Z])\b\)?"),
    re.compile(r"^\s*\(?([A-Z])\)?\s*[.):]?\s*$"),
    re.compile(r"^\s*\(?([A-Z])[.)]\s"),
    re.compile(r"\(([A-Z])\)"),
)


def choice_extract(text: str) -> str | None:
    for pattern in _CHOICE_PATTERNS:
        found = pattern.findall(text)
        if found:
            return str(found[-1])
    return None


def choice_check(gold: str, text: str) -> float:
    want = gold.strip().strip("()").strip().upper()
    return float(bool(want) and choice_extract(text) == want)


# --- registry --------------------------------------------------------------------

VERIFIERS: dict[str, Verifier] = {
    "exact": Verifier("exact", exact_extract, exact_check),
    "last_number": Verifier("last_number", last_number_extract, last_number_check),
    "math_verify": Verifier("math_verify", math_verify_extract, math_verify_check, math_verify_judge, isolate=True),
    "choice": Verifier("choice", choice_extract, choice_check),
}


def judge(name: str, gold: str, text: str) -> tuple[str | None, float]:
    """``VERIFIERS[name].judged``: a top-level function, so a worker process can be sent it."""
    return VERIFIERS[name].judged(gold, text)


def get_verifier(name: str) -> Verifier:
    """The verifier called ``name``; a ``ConfigError`` on ``data.verifier`` otherwise."""
    if name in VERIFIERS:
        return VERIFIERS[name]
    message = f"unknown verifier {name!r} (expected one of {', '.join(sorted(VERIFIERS))})"
    close = difflib.get_close_matches(name, VERIFIERS, n=1)
    if close:
        message += f"; did you mean {close[0]!r}?"
    raise ConfigError(message, field="data.verifier")
