"""Self-Taught Evaluator data (Wang et al. 2024, "Self-Taught Evaluators", Section 3): pairs with a
known winner from unlabelled instructions, and the rejection filter on the judge's own judgments.

For an instruction x, a similar but different instruction x' is written; a response to x is
"good" for x and a response to x' is "bad" for x (it answers another question), so the pair
needs no human label. The judge samples judgments of (x, good, bad); those whose verdict
picks the good response are kept (rejection sampling) and the judge is fine-tuned on them;
the next iteration samples with the fine-tuned judge.

Here x' comes from one of two places:

- the built-in arithmetic task: x' is x with one operand changed (``perturb_expression``),
  and the responses are the worked solutions of x and x' (``arithmetic_contrast``);
- a generator model (``data.judge.ste_generator``) asked ``PERTURB`` for x', then asked x
  and x' for the responses (``posttrain.recipes.judge``); the instructions x are the
  ``{prompt}`` rows of ``data.path`` (``read_instructions``: unlabelled, so no answer field).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

from posttrain.judges.parse import Side, parse_pairwise, question_text
from posttrain.tasks.judging import JudgePair, worked_solution
from posttrain.tasks.rows import RowError, message_list, parse_rows, read_rows, string_field, type_name

PERTURB = (
    "Write one new instruction that is similar to the instruction below but asks for something different, "
    "so that a good answer to it is a bad answer to the original. Reply with the new instruction only.\n\n"
    "Instruction: {question}"
)

_OPERAND = re.compile(r"\d+")


def _instruction(row: Any) -> str:
    if not isinstance(row, dict):
        raise RowError(None, f"expected a JSON object with a 'prompt' (an instruction), got {type_name(row)}")
    if "prompt" not in row:
        raise RowError("prompt", "missing field 'prompt' (an instruction to write a contrasting pair from)")
    prompt = row["prompt"]
    return question_text(message_list(prompt, "prompt") if isinstance(prompt, list) else string_field(row, "prompt"))


def read_instructions(path: str) -> list[str]:
    """The instruction of every row of ``path`` (its ``prompt``: text, or chat turns as ``question_text`` reads them).

    Other fields are ignored: the Self-Taught Evaluator needs no label. A row without a ``prompt``
    is a ``DataError`` naming the file and line.
    """
    return [q for _, q in parse_rows(read_rows(path)["train"], _instruction)]


def perturb_expression(expression: str, rng: random.Random) -> str:
    """``expression`` with one operand replaced by a different number of the same number of digits."""
    spans = [m.span() for m in _OPERAND.finditer(expression)]
    start, end = rng.choice(spans)
    old = expression[start:end]
    low = 0 if len(old) == 1 else 10 ** (len(old) - 1)
    new = old
    while new == old:
        new = str(rng.randint(low, 10 ** len(old) - 1))
    return expression[:start] + new + expression[end:]


def arithmetic_contrast(expression: str, question: str, rng: random.Random) -> JudgePair:
    """A problem's worked solution (good) against the worked solution of a perturbed problem (bad)."""
    other = perturb_expression(expression, rng)
    return JudgePair(f"ste:{expression}", question, worked_solution(expression), worked_solution(other))


def generated_pairs(
    it: int,
    questions: Sequence[str],
    others: Sequence[str],
    replies: Sequence[str | None],
    replies_to_others: Sequence[str | None],
) -> list[JudgePair]:
    """The generator's contrasting pairs: (x, its reply to x, its reply to x') for each usable x'.

    An x' is dropped when it is empty, equal to x, or when either reply is missing (too long) or the two
    replies are equal once stripped: such a pair has no known winner.
    """
    pairs = []
    for k, (q, other, good, bad) in enumerate(zip(questions, others, replies, replies_to_others, strict=True)):
        if other and other != q and good is not None and bad is not None and good.strip() != bad.strip():
            pairs.append(JudgePair(f"ste:{it}:{k}", q, good, bad))
    return pairs


def keep_judgments(judgments: Sequence[str], right: Side, rng: random.Random, keep: int = 1) -> list[str]:
    """Rejection sampling: up to ``keep`` of the judgments whose verdict picks the known winner, at random."""
    good = [j for j in judgments if parse_pairwise(j) == right]
    rng.shuffle(good)
    return good[:keep]
