"""The built-in verifiable task: multi-step integer arithmetic.

Problems are chains such as ``37+48-15`` evaluated left to right. Every problem is
generated from a seed, so the task needs no download and has unlimited data. The
train/test split is a property of the problem itself (a stable hash of its text),
so the two splits are disjoint however many examples either side draws.

A demonstration spells out one step per line and ends with ``#<answer>``::

    37+48-15=?
    37+48=85
    85-15=70
    #70

With ``direct_fraction`` > 0, that share of demonstrations states only the answer
(``#70``), as data pooled from several sources often mixes worked and unworked
solutions. A model fine-tuned on the mix sometimes skips the steps and then is
usually wrong: the strategy choice that RL with a verifier should learn to make.

The verifier reads the number after the last ``#`` (falling back to the last
number), so the chain of thought may contain any numbers it likes.
"""

from __future__ import annotations

import random
import re

from posttrain.config import ArithmeticConfig
from posttrain.tasks.base import Example, Prompt, Split
from posttrain.tasks.rows import in_test_split

_ANSWER = re.compile(r"#\s*(-?\d+)")
_NUMBER = re.compile(r"-?\d+")


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    return a * b


def extract_answer(text: str) -> str | None:
    found = _ANSWER.findall(text)
    if found:
        return str(int(found[-1]))
    numbers = _NUMBER.findall(text)
    return str(int(numbers[-1])) if numbers else None


class ArithmeticTask:
    name = "arithmetic"

    def __init__(self, cfg: ArithmeticConfig | None = None) -> None:
        self.cfg = cfg or ArithmeticConfig()

    def _operand(self, rng: random.Random) -> int:
        d = self.cfg.digits
        low = 0 if d == 1 else 10 ** (d - 1)
        return rng.randint(low, 10**d - 1)

    def make(self, rng: random.Random) -> Example:
        operands = [self._operand(rng) for _ in range(self.cfg.num_operands)]
        ops = [rng.choice(self.cfg.operators) for _ in range(self.cfg.num_operands - 1)]
        expression = str(operands[0]) + "".join(f"{op}{x}" for op, x in zip(ops, operands[1:]))
        steps, value = [], operands[0]
        for op, x in zip(ops, operands[1:]):
            new = _apply(value, op, x)
            steps.append(f"{value}{op}{x}={new}")
            value = new
        completion = "\n".join(steps) + f"\n#{value}"
        if self.cfg.direct_fraction and rng.random() < self.cfg.direct_fraction:
            completion = f"#{value}"
        return Example(id=expression, prompt=f"{expression}=?\n", answer=str(value), completion=completion)

    def examples(self, split: Split, n: int | None, seed: int) -> list[Example]:
        if n is None:
            raise ValueError("the arithmetic task is generated on demand: ask for a number of examples")
        want_test = split == "test"
        rng = random.Random(f"arithmetic:{split}:{seed}")
        out: list[Example] = []
        seen: set[str] = set()
        tries = 0
        while len(out) < n:
            tries += 1
            if tries > 1000 * (n + 10):
                raise ValueError(f"cannot draw {n} distinct {split} problems with these difficulty settings")
            ex = self.make(rng)
            if in_test_split(ex.id, self.cfg.test_fraction) != want_test:
                continue
            # the test split is scored per problem, so repeats would weight some twice
            if want_test and ex.id in seen:
                continue
            seen.add(ex.id)
            out.append(ex)
        return out

    def prompt(self, example: Example) -> Prompt:
        return example.prompt

    def extract(self, completion: str) -> str | None:
        return extract_answer(completion)

    def verify(self, example: Example, completion: str) -> float:
        return float(example.answer is not None and extract_answer(completion) == example.answer)
