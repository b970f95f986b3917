"""A built-in mix of prompts that want different temperatures, for adaptive decoding.

Two kinds of prompt, drawn at random (``data.mixed_decoding.variety_fraction``):

- ``exact``: the built-in arithmetic problems (``data.arithmetic``), rewarded 1 for
  the right answer. One answer is right, so greedy decoding is what they want.
- ``variety``: "name a number that is not in this list"::

      not in 12,5,33,8?
      #27

  A sample scores 1 when its number is not in the list *and* no other sample of
  its group (the samples of the same prompt) gave the same number
  (``group_rewards``); 0 otherwise. Greedy decoding gives every sample the same
  number and scores 0; only sampling with some temperature scores well.

This is the diversity-aware reward of the paper's creative tasks in miniature
(Dhuliawala et al. 2024, arXiv 2411.09661, where a reward model judges stories): one
temperature for both kinds loses on one of them, and a per-example temperature head
can win on both. ``verify`` alone (no group) scores only the list condition, as
``posttrain eval`` would; the adaptive recipe applies the group rule on top.

Demonstrations (for SFT): worked arithmetic solutions, and ``#k`` with k drawn
uniformly among the numbers in [0, max_number) that are not in the list.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Sequence
from typing import Literal

from posttrain.config import ArithmeticConfig, MixedDecodingConfig
from posttrain.tasks.arithmetic import ArithmeticTask, extract_answer
from posttrain.tasks.base import Example, Prompt, Split
from posttrain.tasks.rows import in_test_split

Kind = Literal["exact", "variety"]
KINDS: tuple[Kind, ...] = ("exact", "variety")
EXACT, VARIETY = "exact:", "variety:"  # example id prefixes: the prompt's kind


def kind_of(example: Example) -> Kind:
    return "variety" if example.id.startswith(VARIETY) else "exact"


def listed(example: Example) -> set[str]:
    """A variety prompt's listed numbers (its ``answer`` holds them, comma-separated)."""
    return set((example.answer or "").split(","))


class MixedDecodingTask:
    name = "mixed_decoding"

    def __init__(self, cfg: MixedDecodingConfig | None = None, arithmetic: ArithmeticConfig | None = None) -> None:
        self.cfg = cfg or MixedDecodingConfig()
        self.arithmetic = ArithmeticTask(arithmetic)

    def _exact(self, rng: random.Random) -> Example:
        ex = self.arithmetic.make(rng)
        return dataclasses.replace(ex, id=EXACT + ex.id)

    def _variety(self, rng: random.Random) -> Example:
        numbers = rng.sample(range(self.cfg.max_number), self.cfg.list_size)
        text = ",".join(str(n) for n in numbers)
        free = [n for n in range(self.cfg.max_number) if n not in numbers]
        return Example(id=VARIETY + text, prompt=f"not in {text}?\n", answer=text, completion=f"#{rng.choice(free)}")

    def make(self, rng: random.Random) -> Example:
        return self._variety(rng) if rng.random() < self.cfg.variety_fraction else self._exact(rng)

    def examples(self, split: Split, n: int | None, seed: int) -> list[Example]:
        """``n`` prompts of ``split``; the split is a hash of the prompt, as the arithmetic task's."""
        if n is None:
            raise ValueError("the mixed decoding task is generated on demand: ask for a number of examples")
        want_test = split == "test"
        rng = random.Random(f"mixed_decoding:{split}:{seed}")
        out: list[Example] = []
        seen: set[str] = set()
        for _ in range(1000 * (n + 10)):
            if len(out) == n:
                return out
            ex = self.make(rng)
            if in_test_split(ex.id, self.arithmetic.cfg.test_fraction) != want_test or (want_test and ex.id in seen):
                continue
            seen.add(ex.id)
            out.append(ex)
        if len(out) < n:
            raise ValueError(f"cannot draw {n} distinct {split} prompts with these settings")
        return out

    def prompt(self, example: Example) -> Prompt:
        return example.prompt

    def extract(self, completion: str) -> str | None:
        return extract_answer(completion)

    def verify(self, example: Example, completion: str) -> float:
        """Exact: the right answer. Variety: a number that is not in the list (the group rule is ``group_rewards``)."""
        answer = extract_answer(completion)
        if kind_of(example) == "exact":
            return float(example.answer is not None and answer == example.answer)
        return float(answer is not None and answer not in listed(example))


def group_rewards(example: Example, texts: Sequence[str], scores: Sequence[float | None]) -> list[float | None]:
    """One prompt's samples' rewards with the group rule: a variety sample keeps its 1 only if its number is unique.

    ``scores`` are ``verify``'s (None: unscored, left so); exact prompts are returned unchanged.
    """
    if kind_of(example) != "variety":
        return list(scores)
    answers = [extract_answer(t) for t in texts]
    counts = Counter(a for a in answers if a is not None)
    return [s if s is None or a is None else (s if counts[a] == 1 else 0.0) for a, s in zip(answers, scores)]
