r"""Judge prompts and verdicts: J1-style templates in, a score or a side out.

J1 (Whitehouse et al. 2025, "J1: Incentivizing Thinking in LLM-as-a-Judge via
Reinforcement Learning", Sections 2-3) asks the judge to think first and then
state its verdict in a fixed form. Here:

- pairwise: ``[[A]]`` or ``[[B]]``; pointwise: a score from 0 to 10 as ``[[7]]``
  (also ``Score: 7`` or ``7/10`` after ``score``);
- the verdict is the **last** marker in the text, so reasoning that quotes the
  format earlier ("answer with [[A]] or [[B]]") does not decide it;
- no marker, a score outside [0, 10], or both markers fused (``[[AB]]``) is
  malformed: ``None``. A caller counts it as a parse failure and never reads it
  as 0 (a 0 would tell the policy its answer was the worst).

Templates are plain text with placeholders ``{question}``, ``{answer}``
(pointwise), ``{answer_a}`` and ``{answer_b}`` (pairwise); nothing else in braces
is read, so a template may hold LaTeX. Built in: ``j1`` (think in
``<think>...</think>``, then the verdict: for real chat models) and ``short``
(a compact layout for the built-in character-level tiny model, whose context is
128 tokens). Any other value is a template file. The rendered text becomes a user
turn through the judge model's chat template when it has one
(``posttrain.tasks.prompting``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from posttrain.errors import ConfigError
from posttrain.tasks.base import Prompt

Mode = Literal["pointwise", "pairwise"]
Side = Literal["A", "B"]

_PAIR = re.compile(r"\[\[\s*([AB])\s*\]\]")
_SCORE = re.compile(r"\[\[\s*(-?\d+(?:\.\d+)?)\s*\]\]|score\s*[:=]?\s*(-?\d+(?:\.\d+)?)(?:\s*/\s*10)?", re.IGNORECASE)
_FIELDS = {"pairwise": ("{question}", "{answer_a}", "{answer_b}"), "pointwise": ("{question}", "{answer}")}

J1_PAIRWISE = """You are an impartial judge. Read the question and the two responses below. Think carefully \
about which response is correct and more helpful inside <think> and </think>, then give your final verdict \
as [[A]] if Response A is better or [[B]] if Response B is better.

[Question]
{question}

[Response A]
{answer_a}

[Response B]
{answer_b}"""

J1_POINTWISE = """You are an impartial judge. Read the question and the response below. Think carefully \
about whether the response is correct and helpful inside <think> and </think>, then give your final score \
from 0 (worst) to 10 (best) as [[score]], for example [[7]].

[Question]
{question}

[Response]
{answer}"""

SHORT_PAIRWISE = "{question}\nA:\n{answer_a}\nB:\n{answer_b}\nbetter:"
SHORT_POINTWISE = "{question}\n{answer}\nscore:"

TEMPLATES: dict[str, dict[str, str]] = {
    "j1": {"pairwise": J1_PAIRWISE, "pointwise": J1_POINTWISE},
    "short": {"pairwise": SHORT_PAIRWISE, "pointwise": SHORT_POINTWISE},
}


def parse_pairwise(text: str) -> Side | None:
    """The side the judge picked: the last ``[[A]]``/``[[B]]`` in ``text``; None when there is none."""
    found = _PAIR.findall(text)
    return found[-1] if found else None  # type: ignore[no-any-return]


def parse_pointwise(text: str) -> float | None:
    """The judge's score in [0, 10]: the last ``[[n]]`` or ``score: n``; None when missing or out of range."""
    found = _SCORE.findall(text)
    if not found:
        return None
    bracketed, spoken = found[-1]
    value = float(bracketed or spoken)
    return value if 0.0 <= value <= 10.0 else None


def load_template(template: str, mode: Mode, field: str = "template") -> str:
    """A built-in template by name (``j1``, ``short``) or the text of a template file, checked for its fields."""
    if template in TEMPLATES:
        return TEMPLATES[template][mode]
    path = Path(template)
    if not path.is_file():
        raise ConfigError(
            f"{template!r} is neither a built-in judge template ({', '.join(TEMPLATES)}) nor a file", field=field
        )
    text = path.read_text()
    missing = [f for f in _FIELDS[mode] if f not in text]
    if missing:
        raise ConfigError(f"a {mode} judge template needs {', '.join(missing)}", file=str(path), field=field)
    return text


def render(template: str, question: str, answers: tuple[str, ...]) -> str:
    """``template`` with its placeholders filled: one answer (pointwise) or two, A then B (pairwise)."""
    values = {"{question}": question.strip()}
    if len(answers) == 1:
        values["{answer}"] = answers[0].strip()
    else:
        values["{answer_a}"], values["{answer_b}"] = answers[0].strip(), answers[1].strip()
    pattern = re.compile("|".join(re.escape(k) for k in values))
    return pattern.sub(lambda m: values[m.group(0)], template)


def question_text(prompt: Prompt) -> str:
    """What was asked, as text: the prompt itself, or a chat prompt's turns (its last user turn alone when single)."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    if len(users) == 1:
        return users[0]
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def verdict_text(mode: Mode, verdict: Side | float) -> str:
    """The verdict in the form the parser reads: ``[[A]]``, ``[[7]]``; a demonstration for format warm-up."""
    if mode == "pairwise":
        return f"[[{verdict}]]"
    assert isinstance(verdict, (int, float))
    return f"[[{verdict:g}]]"
