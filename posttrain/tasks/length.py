"""LIFT: length instructions in preference and SFT data, and the length-violation metric.

After "Following Length Constraints in Instructions" (Yuan et al. 2024, arXiv
2406.17744). A length instruction is put before the instruction (the paper's
template, ``data.length_instructions.template``)::

    Answer the following instruction using <MAX_LEN> words or less.

    <instruction>

Words are whitespace-separated tokens (``word_count``).

- **Preference pairs** (``lift_pair``): the limit N is drawn between the two replies'
  word counts, N uniform in [shorter, longer - 1], so the shorter reply keeps it and the
  longer breaks it. The reply that keeps the limit is chosen: when that is the
  original rejected one the pair flips; when it is the original chosen one the
  preference stands. Replies of equal length get N = their length: both keep it and
  the original preference stands. ``fraction`` of the pairs get such a copy;
  ``keep_original`` keeps the uninstructed pairs beside them (the paper trains on
  both, so the model still answers prompts without a limit).
- **SFT demonstrations and RL / evaluation prompts** (``LengthInstructedTask``): a
  demonstration's limit is drawn in [w, 2w] for its own word count w (so the
  demonstration follows its instruction); a prompt without a demonstration gets
  ``max_words``.
- **Metric** (``violation_rate``, and the ``length_instructions`` record of an
  evaluation): the share of samples longer than their limit, beside the usual
  accuracy as the quality under length instructions.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Any

from posttrain.config import LengthInstructionsConfig
from posttrain.tasks.base import Example, Prompt, Split, Task


def word_count(text: str) -> int:
    return len(text.split())


def instruct(prompt: Prompt, max_words: int, template: str) -> Prompt:
    """``prompt`` with the length instruction before it (a conversation: before its last user turn's text)."""
    head = template.replace("<MAX_LEN>", str(max_words)).replace("{max_len}", str(max_words))
    if isinstance(prompt, str):
        return f"{head}\n\n{prompt}"
    out = [dict(m) for m in prompt]
    for m in reversed(out):
        if m.get("role") == "user":
            m["content"] = f"{head}\n\n{m['content']}"
            break
    return out


def violates(text: str, max_words: int) -> bool:
    return word_count(text) > max_words


def violation_rate(texts: Sequence[str], limits: Sequence[int]) -> float:
    """Share of ``texts`` longer than their limit."""
    if not texts:
        raise ValueError("a violation rate over no samples is undefined")
    return sum(violates(t, n) for t, n in zip(texts, limits)) / len(texts)


def lift_pair(chosen: str, rejected: str, rng: random.Random) -> tuple[int, str, str]:
    """(N, chosen, rejected) under a limit N drawn between the replies' lengths (module docstring)."""
    a, b = word_count(chosen), word_count(rejected)
    if a == b:
        return a, chosen, rejected
    n = rng.randint(min(a, b), max(a, b) - 1)
    return (n, chosen, rejected) if a <= n else (n, rejected, chosen)


def lift_pairs(pairs: list[Any], cfg: LengthInstructionsConfig, seed: int) -> list[Any]:
    """Preference pairs (``posttrain.tasks.preferences.PreferencePair``) with length-instructed copies added.

    Each copy has id ``<id>:lift`` and the instructed prompt; chosen and rejected as ``lift_pair`` says.
    """
    rng = random.Random(f"lift:{seed}")
    out = list(pairs) if cfg.keep_original else []
    for p in pairs:
        if rng.random() >= cfg.fraction:
            continue
        n, chosen, rejected = lift_pair(p.chosen, p.rejected, rng)
        prompt = instruct(p.prompt, n, cfg.template)
        out.append(dataclasses.replace(p, id=f"{p.id}:lift", prompt=prompt, chosen=chosen, rejected=rejected))
    return out


class LengthInstructedTask:
    """``task`` with a length instruction before every prompt; its demonstrations follow their limits."""

    def __init__(self, task: Task, cfg: LengthInstructionsConfig) -> None:
        self.task, self.cfg = task, cfg
        self.name = task.name

    def __getattr__(self, name: str) -> Any:  # verifier, count, test_file, ...
        if name == "task":  # not set yet (copying, unpickling)
            raise AttributeError(name)
        return getattr(self.task, name)

    def limit(self, ex: Example) -> int:
        if ex.completion is None:
            return self.cfg.max_words
        w = word_count(ex.completion)
        return random.Random(f"lift-demo:{ex.id}").randint(w, 2 * w) if w else self.cfg.max_words

    def examples(self, split: Split, n: int | None, seed: int) -> list[Example]:
        out = []
        for ex in self.task.examples(split, n, seed):
            # evaluation asks every test problem under the same limit; SFT demonstrations their own
            limit = self.cfg.max_words if split == "test" else self.limit(ex)
            if ex.prompt == "":  # a {text} row has no instruction to put a limit before
                out.append(ex)
                continue
            out.append(dataclasses.replace(ex, prompt=instruct(ex.prompt, limit, self.cfg.template)))
        return out

    def prompt(self, example: Example) -> Prompt:
        return self.task.prompt(example)

    def verify(self, example: Example, completion: str) -> float:
        return self.task.verify(example, completion)

    def extract(self, completion: str) -> str | None:
        return self.task.extract(completion)

    def sample_record(self, problems: list[Example], texts: list[list[str]], seed: int) -> dict[str, Any]:
        """The evaluation's ``length_instructions`` entry: violation rate and mean words, with intervals."""
        from posttrain.eval.passk import bootstrap_ci

        per_problem, words = [], []
        n = self.cfg.max_words  # every test problem is asked under this limit (``examples``)
        for row in texts:
            if not row:
                continue
            per_problem.append(violation_rate(row, [n] * len(row)))
            words.append(sum(word_count(t) for t in row) / len(row))
        if not per_problem:
            return {}
        rate = sum(per_problem) / len(per_problem)
        return {
            "length_instructions": {
                "max_words": self.cfg.max_words,
                "violation_rate": rate,
                "violation_rate_ci": list(bootstrap_ci(per_problem, seed=seed)),
                "mean_words": sum(words) / len(words),
            }
        }


def arithmetic_pairs(n: int, seed: int = 0, short: str = "wrong") -> list[dict[str, str]]:
    """Preference rows for the LIFT demonstration: a worked solution against a one-word answer.

    The one-word reply states a wrong answer (``short="wrong"``) or the right one without
    the steps (``"right"``). Without a limit the worked solution is preferred; under a
    limit it breaks and the one-word reply keeps, so LIFT's copies prefer the short one
    (``lift_pair``).
    """
    from posttrain.config import ArithmeticConfig
    from posttrain.tasks.arithmetic import ArithmeticTask

    rng = random.Random(f"lift-pairs:{seed}")
    task = ArithmeticTask(ArithmeticConfig(num_operands=3, digits=1, operators="+-"))
    rows = []
    for ex in task.examples("train", n, seed):
        assert ex.completion is not None and ex.answer is not None
        value = int(ex.answer) + (0 if short == "right" else rng.choice([-2, -1, 1, 2]))
        rows.append({"prompt": str(ex.prompt), "chosen": ex.completion, "rejected": f"#{value}"})
    return rows


if __name__ == "__main__":  # python -m posttrain.tasks.length OUT.jsonl N [wrong|right]: the demo's pairs
    import json
    import sys
    from pathlib import Path

    out, count = sys.argv[1], int(sys.argv[2])
    kind = sys.argv[3] if len(sys.argv) > 3 else "wrong"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in arithmetic_pairs(count, short=kind))
