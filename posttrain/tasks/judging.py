"""``data.task: judge``: a verdict task, to train an LLM judge with RL on verdicts that can be checked.

J1 (Whitehouse et al. 2025, "J1: Incentivizing Thinking in LLM-as-a-Judge via
Reinforcement Learning") trains a judge with GRPO on preference pairs whose winner is
known: the judge reasons, states a verdict, and is rewarded when the verdict is right.
This task turns pairs into such prompts, so ``posttrain grpo`` (or ``posttrain judge``)
trains a judge through the same RL path as any policy.

Pairs (``data.judge.source``):

- ``arithmetic``: a problem of the built-in task with its worked solution (right)
  against a corrupted copy (wrong): the final answer changed, or one step's result
  changed and carried through the later steps (``data.judge.corrupt``);
- ``preferences``: ``{prompt, chosen, rejected}`` rows of ``data.path``
  (``posttrain.tasks.preferences``); a row's ``subset`` field is kept for per-subset
  evaluation;
- ``sampled``: a correct and an incorrect sample of each problem of a verifiable task,
  drawn from ``data.judge.sample_from`` by ``posttrain judge``
  (``posttrain.recipes.judge.sample_pairs``), which writes them as a preference file.

Each pair becomes two examples, adjacent in every draw, so both land in the same
iteration (``data.judge.mode``):

- ``pairwise``: the pair in both orders, ``A=chosen, B=rejected`` (right verdict
  ``[[A]]``) and ``A=rejected, B=chosen`` (``[[B]]``);
- ``pointwise``: one prompt per response; a score above 5 is right for the chosen
  response, below 5 for the rejected one when judged alone.

The position-bias rule (``data.judge.reward``) needs both examples' samples at once
and lives in the ``verdict`` reward component (``posttrain.rewards.judge``):
``both_orders`` rewards sample j of one order 1 only when it and sample j of the other
order are both right (pointwise: when sample j scores the chosen response above
sample j of the rejected one); ``per_order`` rewards each verdict on its own, which is
``verify`` here. A malformed verdict is a wrong verdict: reward 0 (this is the judge's
own training signal, where a verdict it cannot state is a mistake).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from posttrain.config import ArithmeticConfig, DataConfig
from posttrain.judges.parse import (
    Mode,
    load_template,
    parse_pairwise,
    parse_pointwise,
    question_text,
    render,
    verdict_text,
)
from posttrain.tasks.arithmetic import ArithmeticTask
from posttrain.tasks.base import Example, Prompt, Split
from posttrain.tasks.rows import read_rows

GOOD, BAD = "good", "bad"  # pointwise examples' answers: which response of the pair they show
ORDERS = {"pairwise": ("ab", "ba"), "pointwise": (GOOD, BAD)}
Corrupt = Literal["answer", "step", "mixed"]


@dataclass(frozen=True)
class JudgePair:
    """A question and two responses, the first known to be better."""

    id: str
    question: str
    chosen: str
    rejected: str
    source: str | None = None  # "file:line", for error messages
    subset: str | None = None  # RewardBench-style category, for per-subset evaluation


def corrupt_solution(ex: Example, rng: random.Random, how: Corrupt) -> str:
    """A wrong worked solution of an arithmetic problem: its final answer off, or one step off and carried on.

    A step error keeps the later steps consistent with the wrong value, so only checking the
    arithmetic finds it; an answer error contradicts the last step.
    """
    assert ex.completion is not None
    lines = ex.completion.split("\n")
    steps = lines[:-1]
    delta = rng.choice([-3, -2, -1, 1, 2, 3])
    if how == "mixed":
        how = rng.choice(["answer", "step"])
    if how == "answer" or not steps:
        return "\n".join([*steps, f"#{int(ex.answer or 0) + delta}"])
    k = rng.randrange(len(steps))
    out, value = list(steps[:k]), None
    for i, step in enumerate(steps[k:]):
        left, result = step.split("=")
        if i == 0:
            value = int(result) + delta
        else:  # the next step starts from the wrong value
            op_at = max(left.rfind("+"), left.rfind("-"), left.rfind("*"))
            op, operand = left[op_at], int(left[op_at + 1 :])
            left = f"{value}{op}{operand}"
            assert value is not None
            value = value + operand if op == "+" else value - operand if op == "-" else value * operand
        out.append(f"{left}={value}")
    return "\n".join([*out, f"#{value}"])


def arithmetic_pairs(cfg: ArithmeticConfig, split: Split, n: int, seed: int, how: Corrupt) -> list[JudgePair]:
    """``n`` problems of the built-in task's ``split``, each its worked solution against a corrupted one."""
    rng = random.Random(f"judge-arithmetic:{split}:{seed}")
    out = []
    for ex in ArithmeticTask(cfg).examples(split, n, seed):
        solution = ex.completion if ex.completion and "\n" in ex.completion else worked_solution(ex.id)
        base = Example(id=ex.id, prompt=ex.prompt, answer=ex.answer, completion=solution)
        out.append(JudgePair(ex.id, str(ex.prompt), solution, corrupt_solution(base, rng, how)))
    return out


def worked_solution(expression: str) -> str:
    """The step-by-step solution of ``expression`` (a demonstration may state only the answer)."""
    tokens: list[str] = []
    num = ""
    for ch in expression:
        if ch in "+-*" and num:
            tokens.append(num)
            tokens.append(ch)
            num = ""
        else:
            num += ch
    tokens.append(num)
    value, steps = int(tokens[0]), []
    for op, x in zip(tokens[1::2], tokens[2::2]):
        new = value + int(x) if op == "+" else value - int(x) if op == "-" else value * int(x)
        steps.append(f"{value}{op}{x}={new}")
        value = new
    return "\n".join(steps) + f"\n#{value}"


def preference_pairs(path: str, eval_path: str | None, whole_file: bool) -> dict[Split, list[JudgePair]]:
    """The rows of a preference file as judge pairs, split as ``posttrain dpo`` splits them, subsets kept."""
    from posttrain.tasks.preferences import load_preferences  # transformers: only for files

    held_out = path if whole_file and eval_path is None else eval_path  # evaluation: every row is a test row
    splits = load_preferences(path, held_out)
    subsets = _subsets([path] + ([held_out] if held_out and held_out != path else []))
    return {
        split: [
            JudgePair(p.id, question_text(p.prompt), p.chosen, p.rejected, p.source, subsets.get(p.source))
            for p in pairs
        ]
        for split, pairs in splits.items()
    }


def _subsets(paths: list[str]) -> dict[str, str]:
    """``file:line`` -> the row's ``subset`` field, for rows that have one."""
    out = {}
    for path in paths:
        for rows in read_rows(path).values():
            for line, row in rows.rows:
                if isinstance(row, dict) and isinstance(row.get("subset"), str):
                    out[f"{rows.label}:{line}"] = row["subset"]
    return out


def partner_id(example_id: str) -> str:
    """The id of the pair's other example: the swapped order, or the other response."""
    head, _, order = example_id.rpartition("|")
    for first, second in ORDERS.values():
        if order == first:
            return f"{head}|{second}"
        if order == second:
            return f"{head}|{first}"
    return example_id


class JudgeTask:
    """Verdict prompts from pairs with a known winner; ``verify`` reads the verdict of one prompt."""

    name = "judge"

    def __init__(self, data: DataConfig, whole_file: bool = False) -> None:
        self.cfg, self.data = data.judge, data
        self.mode: Mode = self.cfg.mode
        self.template = load_template(self.cfg.template, self.mode, field="data.judge.template")
        self._splits: dict[Split, list[JudgePair]] | None = None
        if self.cfg.source == "sampled":
            from posttrain.errors import ConfigError

            raise ConfigError(
                "sampled pairs are drawn by `posttrain judge` (posttrain.recipes.judge.sample_pairs), "
                "which then reads them as data.judge.source=preferences",
                field="data.judge.source",
            )
        if self.cfg.source == "preferences":
            assert data.path is not None  # checked by config validation
            self._splits = preference_pairs(data.path, data.eval_path, whole_file)

    def pairs(self, split: Split, n: int | None, seed: int) -> list[JudgePair]:
        """``n`` pairs of ``split`` (all of a file's when None; ``data.num_train`` generated ones for training)."""
        if self._splits is None:
            count = n if n is not None else (self.data.num_train if split == "train" else 200)
            return arithmetic_pairs(self.data.arithmetic, split, count, seed, self.cfg.corrupt)
        rows = self._splits[split]
        if not rows:
            from posttrain.errors import DataError

            raise DataError(f"the {split} split holds no preference pairs", file=self.data.path)
        if n is None:
            return list(rows)
        rng = random.Random(seed)
        return rng.sample(rows, n) if n <= len(rows) else [rng.choice(rows) for _ in range(n)]

    def examples(self, split: Split, n: int | None, seed: int) -> list[Example]:
        """Both examples of each drawn pair, adjacent; ``n`` examples (an odd ``n`` ends with a lone first order)."""
        pairs = self.pairs(split, None if n is None else (n + 1) // 2, seed)
        out = [ex for k, pair in enumerate(pairs) for ex in self.pair_examples(pair, k)]
        return out if n is None else out[:n]

    def pair_examples(self, pair: JudgePair, k: int = 0) -> tuple[Example, Example]:
        """The pair's two prompts; ``k`` (its place in the draw) keeps a pair drawn twice apart."""
        first, second = ORDERS[self.mode]
        rng = random.Random(f"{pair.id}#{k}")
        views: list[tuple[str, tuple[str, ...], str]]
        if self.mode == "pairwise":
            views = [(first, (pair.chosen, pair.rejected), "A"), (second, (pair.rejected, pair.chosen), "B")]
        else:
            views = [(first, (pair.chosen,), GOOD), (second, (pair.rejected,), BAD)]
        out = []
        for order, answers, right in views:
            out.append(
                Example(
                    id=f"{pair.id}#{k}|{order}",
                    prompt=render(self.template, pair.question, answers),
                    answer=right,
                    completion=self._demo(right, rng),
                    source=pair.source,
                )
            )
        return out[0], out[1]

    def _demo(self, right: str, rng: random.Random) -> str:
        """An SFT target: the right verdict, or (format warm-up) a random one that teaches the form alone."""
        random_demo = self.cfg.demo == "random"
        if self.mode == "pairwise":
            return verdict_text("pairwise", rng.choice(["A", "B"]) if random_demo else right)  # type: ignore[arg-type]
        score = rng.randint(0, 10) if random_demo else (8 if right == GOOD else 2)
        return verdict_text("pointwise", float(score))

    def prompt(self, example: Example) -> Prompt:
        return example.prompt

    def extract(self, completion: str) -> str | None:
        if self.mode == "pairwise":
            return parse_pairwise(completion)
        score = parse_pointwise(completion)
        return None if score is None else f"{score:g}"

    def verify(self, example: Example, completion: str) -> float:
        """1.0 when this prompt's verdict is right: the chosen side, or a score on the right side of 5."""
        if self.mode == "pairwise":
            return float(parse_pairwise(completion) == example.answer)
        score = parse_pointwise(completion)
        if score is None:
            return 0.0
        return float(score > 5 if example.answer == GOOD else score < 5)
