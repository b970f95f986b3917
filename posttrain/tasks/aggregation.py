"""``data.task: aggregation``: learn to aggregate a model's candidate solutions (AggLM).

After "The Majority is not always right: RL training for solution aggregation"
(Zhao et al. 2025): an aggregator reads a problem and m sampled solutions and
writes one final solution; its reward is the base task's verifier on that final
answer, and it is trained with GRPO (``posttrain grpo``, unchanged).

- **Candidates.** For each problem of the base task (``data.aggregation.base``: the
  built-in arithmetic task or a ``jsonl`` file), m = ``num_candidates`` solutions
  are sampled from the model in ``candidates_from`` (typically weaker than the
  aggregator, so that the majority is often wrong), at ``temperature``, with that
  model's own prompt style. They are cached on disk, keyed by a hash of that model's
  files, the problems and every sampling setting, so a second run draws nothing.
- **Prompt.** The problem, the numbered candidates, then ``instruction``
  (``aggregation_prompt``).
- **Demonstrations.** An example's completion is the base problem's own demonstration
  (its worked solution, when the base task has one), so ``posttrain sft`` on this task
  teaches a small model the prompt format before GRPO (our addition: the paper starts
  from models that already follow the instruction).
- **Training mix.** A problem is *hard* when majority voting over its candidates is
  not reliably right (its vote score, below, is < 1) and *easy* otherwise. The
  paper trains on all hard problems and about half of the easy ones: ``easy_kept``
  (default 0.5) is the share of easy problems kept; ``hard_fraction`` > 0 instead keeps
  as many easy ones as make hard problems that share of the mix. The training pool is
  ``num_train_problems`` base problems drawn once (the same for every run seed, so
  its candidates are drawn once), mixed, then sampled per step. The test split is
  never filtered.
- **Baselines** (``baselines``, read by ``posttrain eval``): at the same m, majority
  vote over the candidates, best-of-m by a reward model (``reward_model``) when
  given, the mean candidate accuracy, and pass@m (some candidate is right: the
  ceiling of any selection), each with a 95% bootstrap interval over problems.
- **Hard and easy test problems** (``checked_record``): the aggregator's sampled and
  greedy accuracy, majority vote and pass@m on the hard and on the easy test problems
  separately (hard as above, by the test problem's own candidates), the paper's split
  of where aggregation helps (majority wrong) and where it must not hurt (majority right).

Majority vote is scored as the expected accuracy when ties for the most frequent
answer are broken uniformly at random (candidates without an answer do not vote).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from posttrain.config import AggregationConfig
from posttrain.tasks.base import Example, Prompt, Split, Task

# candidates of each problem, in problem order
CandidateSource = Callable[[list[Example]], list[list[str]]]


def problem_text(prompt: Prompt) -> str:
    """The problem as text: a string prompt itself, or the last user turn of a conversation."""
    if isinstance(prompt, str):
        return prompt.strip()
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return (users[-1] if users else prompt[-1]["content"]).strip()


def aggregation_prompt(problem: str, candidates: Sequence[str], instruction: str) -> str:
    """The aggregator's prompt: the problem, the numbered candidate solutions, the instruction.

    >>> print(aggregation_prompt("1+2=?", ["1+2=3\\n#3", "#4"], "Answer:"))
    1+2=?
    Solution 1:
    1+2=3
    #3
    Solution 2:
    #4
    Answer:
    """
    parts = [problem.strip()]
    for i, c in enumerate(candidates, 1):
        parts.append(f"Solution {i}:\n{c.strip()}")
    parts.append(instruction)
    return "\n".join(parts) + "\n"


def vote_score(answers: Sequence[str | None], gold: str | None) -> float:
    """Expected accuracy of majority voting, ties broken uniformly at random; 0 when no candidate answers."""
    counts = Counter(a for a in answers if a is not None)
    if not counts or gold is None:
        return 0.0
    top = max(counts.values())
    tied = [a for a, c in counts.items() if c == top]
    return sum(a == gold for a in tied) / len(tied)


def mix_hard_easy(
    hard: list[Example], easy: list[Example], easy_kept: float, hard_fraction: float, seed: int
) -> list[Example]:
    """All hard problems and a seeded share of the easy ones (see the module docstring), hard first."""
    if hard_fraction > 0:
        keep = min(len(easy), round(len(hard) * (1.0 - hard_fraction) / hard_fraction))
    else:
        keep = round(easy_kept * len(easy))
    rng = random.Random(f"aggregation-mix:{seed}")
    return [*hard, *rng.sample(easy, keep)]


class AggregationTask:
    """A verifiable task whose prompts are (problem, m candidate solutions) and whose reward is the base verifier."""

    name = "aggregation"

    def __init__(self, base: Task, cfg: AggregationConfig, candidates: CandidateSource) -> None:
        self.base, self.cfg, self.candidates = base, cfg, candidates
        self.verifier = getattr(base, "verifier", None)  # a jsonl base's checker runs in the deadline pool
        self._pool: list[Example] | None = None
        self._by_id: dict[str, tuple[Example, list[str]]] = {}
        self.mix: dict[str, int] = {}

    def _wrap(self, problems: list[Example]) -> list[Example]:
        out = []
        for ex, cands in zip(problems, self.candidates(problems)):
            self._by_id[ex.id] = (ex, cands)
            prompt = aggregation_prompt(problem_text(self.base.prompt(ex)), cands, self.cfg.instruction)
            out.append(Example(id=ex.id, prompt=prompt, answer=ex.answer, completion=ex.completion, source=ex.source))
        return out

    def is_hard(self, example: Example) -> bool:
        base, cands = self._by_id[example.id]
        return vote_score([self.base.extract(c) for c in cands], base.answer) < 1.0

    def train_pool(self) -> list[Example]:
        """The mixed training pool, built (and its candidates drawn) once."""
        if self._pool is None:
            wrapped = self._wrap(self.base.examples("train", self.cfg.num_train_problems, 0))
            hard = [ex for ex in wrapped if self.is_hard(ex)]
            easy = [ex for ex in wrapped if not self.is_hard(ex)]
            self._pool = mix_hard_easy(hard, easy, self.cfg.easy_kept, self.cfg.hard_fraction, 0)
            self.mix = {"hard": len(hard), "easy": len(easy), "easy_kept": len(self._pool) - len(hard)}
        return self._pool

    def examples(self, split: Split, n: int | None, seed: int) -> list[Example]:
        if split == "test":
            return self._wrap(self.base.examples("test", n, seed))
        pool = self.train_pool()
        if n is None:
            return list(pool)
        rng = random.Random(f"aggregation:{seed}")
        return rng.sample(pool, n) if n <= len(pool) else rng.choices(pool, k=n)

    def prompt(self, example: Example) -> Prompt:
        return example.prompt

    def _base_example(self, example: Example) -> Example:
        found = self._by_id.get(example.id)
        return found[0] if found is not None else example

    def verify(self, example: Example, completion: str) -> float:
        return self.base.verify(self._base_example(example), completion)

    def extract(self, completion: str) -> str | None:
        return self.base.extract(completion)

    def baselines(self, problems: list[Example], seed: int, reward_model: Any = None) -> dict[str, Any]:
        """Majority vote, best-of-m (``reward_model``: a reward component), mean candidate and pass@m, with intervals."""
        from posttrain.eval.passk import bootstrap_ci

        rows = [self._by_id[ex.id] for ex in problems if ex.id in self._by_id]
        if not rows:
            return {}
        right = [[self.base.verify(base, c) > 0 for c in cands] for base, cands in rows]
        per: dict[str, list[float]] = {
            "majority_vote": [vote_score([self.base.extract(c) for c in cands], b.answer) for b, cands in rows],
            "candidate_accuracy": [sum(r) / len(r) if r else 0.0 for r in right],
            "pass_at_m": [float(any(r)) for r in right],
        }
        if reward_model is not None:
            best = []
            for (b, cands), r in zip(rows, right):
                scores = reward_model.score([b] * len(cands), [self.base.prompt(b)] * len(cands), cands)
                best.append(float(r[max(range(len(cands)), key=lambda i: scores[i])]) if cands else 0.0)
            per["best_of_m"] = best
        out: dict[str, Any] = {"num_candidates": self.cfg.num_candidates, "num_problems": len(rows)}
        for key, values in per.items():
            out[key] = sum(values) / len(values)
            out[f"{key}_ci"] = list(bootstrap_ci(values, seed=seed))
        out["hard_problems"] = sum(v < 1.0 for v in per["majority_vote"])
        return out

    def checked_record(
        self, problems: list[Example], checks: list[list[Any]], greedy: list[Any], seed: int
    ) -> dict[str, Any]:
        """The aggregator's accuracy and the baselines on the hard and on the easy test problems apart.

        ``checks[p]`` are problem p's sample checks, ``greedy[p]`` its greedy check
        (``posttrain.eval.checking.Check``); a problem with an unscored check is left out,
        as pass@k leaves it out. ``aggregation_record`` moves this into eval.json's ``aggregation``.
        """
        from posttrain.eval.passk import bootstrap_ci

        per: dict[str, dict[str, list[float]]] = {"hard": {}, "easy": {}}
        for ex, row, g in zip(problems, checks, greedy):
            if ex.id not in self._by_id or not row or any(c.status != "ok" for c in [*row, g]):
                continue
            base, cands = self._by_id[ex.id]
            vote = vote_score([self.base.extract(c) for c in cands], base.answer)
            values = {
                "aggregator_pass_at_1": sum(c.score > 0 for c in row) / len(row),
                "aggregator_greedy": float(g.score > 0),
                "majority_vote": vote,
                "pass_at_m": float(any(self.base.verify(base, c) > 0 for c in cands)),
            }
            for key, v in values.items():
                per["hard" if vote < 1.0 else "easy"].setdefault(key, []).append(v)
        out: dict[str, Any] = {}
        for split, columns in per.items():
            entry: dict[str, Any] = {"num_problems": len(columns.get("majority_vote", []))}
            for key, column in columns.items():
                entry[key] = sum(column) / len(column)
                entry[f"{key}_ci"] = list(bootstrap_ci(column, seed=seed))
            out[split] = entry
        return {"aggregation_by_difficulty": out}


class ModelCandidates:
    """Candidate solutions sampled from a model directory, cached on disk (``posttrain.eval.cache``).

    Holds paths and settings only (the model is loaded on a cache miss and dropped
    after), so the task stays cheap to copy into reward workers.
    """

    def __init__(self, cfg: AggregationConfig, base_for: Callable[[Any], Task], dtype: str, device: str) -> None:
        assert cfg.candidates_from is not None  # checked by config validation
        self.cfg, self.base_for, self.dtype, self.device = cfg, base_for, dtype, device
        self.root = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.candidates_from) / "aggregation_cache"

    def key(self, problems: list[Example]) -> dict[str, Any]:
        import torch

        from posttrain.eval.cache import digest, model_hash
        from posttrain.rollout.torch_engine import SAMPLER_VERSION

        c = self.cfg
        return {
            "model": model_hash(str(c.candidates_from), self.root / "hashes.json"),
            "problems": digest([[ex.id, ex.prompt, ex.answer] for ex in problems]),
            "num_candidates": c.num_candidates,
            "temperature": c.temperature,
            "max_new_tokens": c.max_new_tokens,
            "seed": c.seed,
            "batch_size": c.batch_size,
            "dtype": self.dtype,
            "sampler": SAMPLER_VERSION,
            "torch": torch.__version__,
        }

    def __call__(self, problems: list[Example]) -> list[list[str]]:
        from posttrain.eval.cache import SampleCache

        if not problems:
            return []
        cache = SampleCache(self.root, self.key(problems))
        found = cache.value("candidates")
        if isinstance(found, list) and len(found) == len(problems):
            return [list(row) for row in found]
        drawn = self.draw(problems)
        cache.save_value("candidates", drawn)
        return drawn

    def draw(self, problems: list[Example]) -> list[list[str]]:
        from posttrain.data.tokenize import encode_prompt
        from posttrain.models.io import load_model, load_tokenizer
        from posttrain.records import SamplingParams
        from posttrain.rollout.torch_engine import TorchEngine

        c, m = self.cfg, self.cfg.num_candidates
        path = str(c.candidates_from)
        tokenizer = load_tokenizer(path)
        model = load_model(path, self.dtype, self.device)
        styled = self.base_for(tokenizer)  # the candidate model's own prompt style
        restyle = getattr(styled, "restyle", None)
        prompts = [encode_prompt(tokenizer, styled.prompt(restyle(ex) if restyle else ex)) for ex in problems]
        engine = TorchEngine(model, tokenizer, batch_size=c.batch_size)
        params = SamplingParams(c.temperature, 1.0, 0, c.max_new_tokens, seed=c.seed)
        done = engine.generate([p for p in prompts for _ in range(m)], params)
        texts = [d.text for d in done]
        return [texts[i * m : (i + 1) * m] for i in range(len(problems))]


def make_aggregation_task(base_for: Callable[[Any], Task], cfg: AggregationConfig, dtype: str, device: str) -> Task:
    """The aggregation task over ``base_for(None)`` (the base task, unstyled), candidates from the model."""
    return AggregationTask(base_for(None), cfg, ModelCandidates(cfg, base_for, dtype, device))


def aggregation_record(task: Task, result: dict[str, Any], num_problems: int, seed: int, dtype: str) -> dict[str, Any]:
    """``eval.json``'s ``aggregation`` entry: the aggregator against the baselines on the same problems, at equal m.

    The aggregator's numbers are the evaluation's own (pass@1 of its samples, greedy
    accuracy); the baselines read the cached candidates of the same test problems.
    """
    from posttrain.eval.sampling import eval_problems

    baselines = getattr(task, "baselines", None)
    if not callable(baselines):
        return {}
    cfg: AggregationConfig = task.cfg  # type: ignore[attr-defined]
    reward_model = None
    if cfg.reward_model is not None:
        from posttrain.rewards.reward_model import RewardModelComponent

        reward_model = RewardModelComponent(task.base, cfg.reward_model, dtype, field="data.aggregation.reward_model")  # type: ignore[attr-defined]
    out = dict(baselines(eval_problems(task, num_problems, seed), seed, reward_model))
    out["aggregator_pass_at_1"] = result.get("pass_at_k", {}).get("1")
    out["aggregator_pass_at_1_ci"] = result.get("pass_at_k_ci", {}).get("1")
    out["aggregator_greedy"] = result.get("greedy_accuracy")
    out["aggregator_greedy_ci"] = result.get("greedy_accuracy_ci")
    if "aggregation_by_difficulty" in result:  # checked_record's split, kept in one place
        out["by_difficulty"] = result.pop("aggregation_by_difficulty")
    return {"aggregation": out}


def format_aggregation_table(results: dict[str, dict[str, Any]]) -> str | None:
    """A markdown table of each model's ``aggregation`` entry; None when no result has one."""
    rows = [(name, r["aggregation"]) for name, r in results.items() if r.get("aggregation")]
    if not rows:
        return None

    def cell(a: dict[str, Any], key: str) -> str:
        value, ci = a.get(key), a.get(f"{key}_ci")
        if value is None:
            return "-"
        return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"

    keys = (
        "aggregator_pass_at_1",
        "aggregator_greedy",
        "majority_vote",
        "best_of_m",
        "candidate_accuracy",
        "pass_at_m",
    )
    m = rows[0][1].get("num_candidates")
    lines = [
        f"### Aggregation at m = {m} candidates (95% bootstrap intervals over problems)",
        "",
        "| model | aggregator (sampled) | aggregator (greedy) | majority vote | best-of-m (RM) | mean candidate | pass@m |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {name} | " + " | ".join(cell(a, k) for k in keys) + " |" for name, a in rows]
    split_rows = [(name, split, a["by_difficulty"][split]) for name, a in rows if a.get("by_difficulty")
                  for split in ("hard", "easy")]  # fmt: skip
    if split_rows:
        lines += [
            "",
            "Hard test problems (majority vote of the candidates not reliably right) and easy ones apart:",
            "",
            "| model | problems | aggregator (sampled) | aggregator (greedy) | majority vote | pass@m |",
            "|---|---|---|---|---|---|",
        ]
        split_keys = ("aggregator_pass_at_1", "aggregator_greedy", "majority_vote", "pass_at_m")
        lines += [f"| {name} | {split}: {e['num_problems']} | " + " | ".join(cell(e, k) for k in split_keys) + " |"
                  for name, split, e in split_rows]  # fmt: skip
    return "\n".join(lines)
