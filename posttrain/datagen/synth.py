"""``posttrain data synth``: CoT-Self-Instruct (Yu et al. 2025, arXiv 2507.23751, section 2).

A model is shown ``k`` seed tasks (``datagen.synth.seeds_per_prompt``; the paper uses 2),
asked to reason about them, and then to write one new task in a fixed format: the
paper's tags, ``[New Question Begin]...[New Question End]`` and, for verifiable tasks,
``[Final Answer to New Question Begin]\\boxed{...}[Final Answer to New Question End]``
(``[New Prompt Begin]...[New Prompt End]`` for instructions). An output without them
is counted (``unparseable``, ``missing_answer``) and dropped. Then one filter:

- answer consistency (verifiable; section 2.2): the target model (``datagen.synth.target_model``,
  by default the generator itself) answers the new task ``K`` times (``datagen.synth.answers``, temperature ``sampling.temperature``); the
  answers are extracted by the task's verifier and the most common one (a tie has no
  majority) is checked against the generated answer by the task's own ``verify``; the
  task is kept when they agree;
- RIP (instructions; Yu et al. 2025, "R.I.P.: Better Models by Survival of the Fittest
  Prompts", arXiv 2501.18578, section 3): the target model writes ``K`` responses, a reward
  model (``datagen.synth.reward_model``) scores them, and the task is kept when the
  lowest (the "rejected") score is at least ``rip_threshold`` and, with
  ``rip_max_gap`` set, the reward gap between the best and the worst response is at most
  ``rip_max_gap``: a low-quality prompt shows itself in a low worst response or in a
  high variance of its responses. The best response is kept as the row's completion.
  (The paper's third rule, a lower bound on the rejected response's length, is not applied.)

Output rows are ``{id, prompt, answer, completion}``: the completion a target sample with
the majority answer (answer consistency) or the best-scored response (RIP); without a
filter, ``{id, prompt, answer}``. ``posttrain grpo|sft data.task=jsonl data.path=kept.jsonl``
reads the file (GRPO the prompt and answer, SFT the completion).

Sharded and resumable: generation prompt ``i`` is built from seeds drawn with its own
seed ``derive_seed(seed, i)``, and shard ``j`` (prompts ``j*shard_size ...``) samples with
its own seed, so a shard's rows do not depend on which shards ran before it. Each
finished shard is written atomically to ``output_dir/shards/shard-0000j.jsonl`` with its
dropped rows beside it; a rerun skips the shards on disk, and when every shard is there
they are merged into ``kept.jsonl``, ``removed.jsonl`` and ``summary.json``.
``datagen.synth.max_shards`` stops a run after that many new shards (a later run goes on).
With ``datagen.backend: ray`` whole shards run on Ray Data actors (``datagen.workers``), each
holding its own generator, target and reward model and sampling a shard exactly as this
process would (its own seed, the in-process engine), so the rows are the in-process rows
whatever the number of workers; each shard is written as it comes back.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from posttrain.config import Config
from posttrain.datagen.io import read_numbered, write_json, write_jsonl, write_rows
from posttrain.errors import ConfigError, DataError
from posttrain.records import SamplingParams
from posttrain.rollout.base import RolloutEngine
from posttrain.seeds import derive_seed
from posttrain.tasks.base import Example, Task
from posttrain.tasks.formats import last_boxed

QUESTION = ("[New Question Begin]", "[New Question End]")
ANSWER = ("[Final Answer to New Question Begin]", "[Final Answer to New Question End]")
INSTRUCTION = ("[New Prompt Begin]", "[New Prompt End]")

_VERIFIABLE_HEAD = (
    "Here are example problems. First think step by step about what they test, their topic and "
    "their difficulty. Then write one new problem of the same kind and difficulty, solve it, and "
    "end with exactly:\n"
    f"{QUESTION[0]}the new problem{QUESTION[1]}\n"
    f"{ANSWER[0]}\\boxed{{its final answer}}{ANSWER[1]}\n"
)
_INSTRUCTION_HEAD = (
    "Here are example instructions. First think step by step about what they ask for and what "
    "makes them good. Then write one new instruction of the same kind and quality, and end with "
    f"exactly:\n{INSTRUCTION[0]}the new instruction{INSTRUCTION[1]}\n"
)


class Seed(NamedTuple):
    question: str
    answer: str | None


@dataclass(frozen=True)
class Parsed:
    question: str | None
    answer: str | None
    error: str | None  # None: parsed; unparseable, missing_answer: dropped, counted under that name


def _between(text: str, tags: tuple[str, str]) -> str | None:
    """The text between the last opening tag and the next closing tag (whitespace and case tolerated)."""
    open_, close = (r"\s*".join(re.escape(p) for p in t.split()) for t in tags)
    found = re.findall(rf"{open_}(.*?){close}", text, flags=re.IGNORECASE | re.DOTALL)
    return found[-1].strip() if found else None


def parse_output(text: str, kind: str) -> Parsed:
    """The new task (and answer) in a generator's output, or why there is none."""
    question = _between(text, INSTRUCTION if kind == "instruction" else QUESTION)
    if not question:
        return Parsed(None, None, "unparseable")
    if kind == "instruction":
        return Parsed(question, None, None)
    raw = _between(text, ANSWER)
    answer = None if raw is None else (last_boxed(raw) if "\\boxed" in raw or "\\fbox" in raw else raw)
    if not answer:
        return Parsed(question, None, "missing_answer")
    return Parsed(question, answer, None)


def generation_prompt(seeds: list[Seed], kind: str) -> str:
    head = _INSTRUCTION_HEAD if kind == "instruction" else _VERIFIABLE_HEAD
    shown = [f"Example {i}:\n{s.question.strip()}" for i, s in enumerate(seeds, start=1)]
    return head + "\n" + "\n\n".join(shown) + "\n\n"


def majority(answers: list[str | None]) -> str | None:
    """The most common extracted answer (``None`` answers do not vote); ``None`` when none or tied."""
    counts = Counter(a for a in answers if a is not None).most_common(2)
    if not counts or (len(counts) == 2 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


def answer_consistent(task: Task, generated: str, samples: list[str]) -> tuple[bool, str | None, int]:
    """(keep, majority answer, its votes): the majority of ``samples``' answers equals ``generated``.

    The majority is taken over the task's extracted answers; whether it equals the
    generated answer is the task's own ``verify`` on a sample holding it, gold first.
    """
    extracted = [task.extract(s) for s in samples]
    top = majority(extracted)
    if top is None:
        return False, None, 0
    holder = samples[extracted.index(top)]
    ok = task.verify(Example(id="synth", prompt="", answer=generated), holder) == 1.0
    return ok, top, extracted.count(top)


def rip_keep(scores: list[float], threshold: float, max_gap: float | None = None) -> bool:
    """RIP's rules: the lowest-scored of the ``K`` responses scores at least ``threshold`` and,
    when ``max_gap`` is given, the best and worst scores differ by at most ``max_gap``."""
    if not scores or min(scores) < threshold:
        return False
    return max_gap is None or max(scores) - min(scores) <= max_gap


def rip_reason(scores: list[float], threshold: float) -> str:
    """Why RIP dropped a task: its worst response scored low, else the gap was too large."""
    return "rip_low_score" if not scores or min(scores) < threshold else "rip_large_gap"


# --- seeds, prompts, shards ------------------------------------------------------


def load_seeds(cfg: Config, task: Task) -> list[Seed]:
    """Seed tasks from ``datagen.input`` (read with ``data.format``'s row parser), else the task's train problems."""
    from posttrain.tasks.formats import resolve_verifier, row_parser
    from posttrain.tasks.rows import RowError
    from posttrain.tasks.verifiers import get_verifier

    if cfg.datagen.input is None:
        if cfg.data.task != "arithmetic":
            raise DataError("give the seed tasks: datagen.input=FILE", field="datagen.input")
        return [Seed(str(ex.prompt).strip(), ex.answer) for ex in task.examples("train", 256, cfg.seed)]
    label, rows = read_numbered(cfg.datagen.input, "datagen.input")
    parse = row_parser(cfg.data.format)
    verifier = get_verifier(resolve_verifier(cfg.data.verifier, cfg.data.format))
    seeds = []
    for line, row in rows:
        try:
            prompt, answer, _ = parse(row, verifier)
        except RowError as e:
            raise DataError(e.message, file=label, line=line, field=e.field) from None
        text = (
            prompt if isinstance(prompt, str) else next(m["content"] for m in reversed(prompt) if m["role"] == "user")
        )
        seeds.append(Seed(text, answer))
    return seeds


def prompt_seeds(seeds: list[Seed], k: int, seed: int, index: int) -> list[Seed]:
    """The ``k`` seeds of generation prompt ``index``: its own draw, whatever ran before it."""
    rng = random.Random(derive_seed(seed, 71, index))
    return rng.sample(seeds, min(k, len(seeds)))


def shard_path(out: Path, j: int) -> Path:
    return out / "shards" / f"shard-{j:05d}.jsonl"


def _dropped_path(out: Path, j: int) -> Path:
    return out / "shards" / f"shard-{j:05d}.dropped.jsonl"


def shard_ranges(n: int, size: int) -> list[range]:
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


# --- one shard -------------------------------------------------------------------


@dataclass
class Tools:
    """What a shard needs: the generator's engine and encoder, the task whose verifier judges, an optional
    scorer, and the target model's engine and encoder (``None``: the generator answers its own tasks)."""

    engine: RolloutEngine
    encode: Callable[[str], list[int]]  # a prompt's text -> token ids (chat template and style applied)
    task: Task
    score: Callable[[list[str], list[str]], list[float]] | None = None  # (prompts, responses) -> rewards
    target: RolloutEngine | None = None  # answers the new tasks / writes RIP's responses; None: engine
    target_encode: Callable[[str], list[int]] | None = None  # the target's tokenizer; None: encode

    def answerer(self) -> tuple[RolloutEngine, Callable[[str], list[int]]]:
        """The target model's engine and encoder: the generator's unless a target was given."""
        if self.target is None:
            return self.engine, self.encode
        return self.target, self.target_encode or self.encode


def _sampling(s: Any, seed: int) -> SamplingParams:
    return SamplingParams(s.temperature, s.top_p, s.top_k, s.max_new_tokens, seed=seed)


def filter_name(cfg: Config) -> str:
    f = cfg.datagen.synth
    if f.filter != "auto":
        return f.filter
    return "answer_consistency" if f.kind == "verifiable" else "rip"


def run_shard(cfg: Config, tools: Tools, seeds: list[Seed], indices: range, j: int) -> tuple[list[Any], list[Any]]:
    """(kept rows, dropped rows) of the generation prompts ``indices``."""
    s = cfg.datagen.synth
    texts = [generation_prompt(prompt_seeds(seeds, s.seeds_per_prompt, cfg.seed, i), s.kind) for i in indices]
    outs = tools.engine.generate(
        [tools.encode(t) for t in texts], _sampling(s.gen_sampling, derive_seed(cfg.seed, 72, j))
    )
    kept: list[Any] = []
    dropped: list[Any] = []
    parsed: list[tuple[int, Parsed]] = []
    for i, c in zip(indices, outs):
        p = parse_output(c.text, s.kind)
        if p.error is not None:
            dropped.append({"id": f"synth-{i:06d}", "reason": p.error, "output": c.text})
        else:
            parsed.append((i, p))
    how = filter_name(cfg)
    if how == "none" or not parsed:
        kept = [_row(i, p, None) for i, p in parsed]
        return kept, dropped
    questions = [p.question or "" for _, p in parsed]
    k = s.answers
    engine, encode = tools.answerer()
    ids = [encode(q.rstrip() + "\n") for q in questions for _ in range(k)]
    answers = engine.generate(ids, _sampling(cfg.sampling, derive_seed(cfg.seed, 73, j)))
    for n, (i, p) in enumerate(parsed):
        samples = [a.text for a in answers[n * k : (n + 1) * k]]
        if how == "answer_consistency":
            ok, top, votes = answer_consistent(tools.task, p.answer or "", samples)
            info = {"majority": top, "votes": votes, "answers": k}
            if ok:  # a sample holding the majority answer is a demonstration: the row also trains SFT
                kept.append(_row(i, p, next(x for x in samples if tools.task.extract(x) == top)))
            else:
                dropped.append({"id": f"synth-{i:06d}", "reason": "answer_inconsistent", **info,
                                "prompt": p.question, "answer": p.answer})  # fmt: skip
            continue
        if tools.score is None:
            raise ConfigError("the rip filter needs datagen.synth.reward_model", field="datagen.synth.reward_model")
        scores = tools.score([p.question or ""] * k, samples)
        if rip_keep(scores, s.rip_threshold, s.rip_max_gap):
            kept.append(_row(i, p, samples[max(range(k), key=lambda x: scores[x])]))
        else:
            dropped.append({"id": f"synth-{i:06d}", "reason": rip_reason(scores, s.rip_threshold),
                            "min_score": min(scores), "max_score": max(scores), "prompt": p.question})  # fmt: skip
    return kept, dropped


def _row(i: int, p: Parsed, completion: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {"id": f"synth-{i:06d}", "prompt": (p.question or "").rstrip() + "\n"}
    if p.answer is not None:
        row["answer"] = p.answer
    if completion is not None:
        row["completion"] = completion
    elif p.answer is None:
        row["answer"] = None  # an instruction with no reference: a prompt for reward-model RL
    return row


# --- the run ---------------------------------------------------------------------


ShardResults = Callable[[list[int]], Iterable[tuple[int, tuple[list[Any], list[Any]]]]]


def synthesize(
    cfg: Config, tools: Tools | None, seeds: list[Seed], shard_results: ShardResults | None = None
) -> dict[str, Any]:
    """Write every shard not yet on disk (at most ``max_shards`` this run), then merge when all are there.

    The shards are run here with ``tools``, or by ``shard_results`` (``datagen.backend: ray``: Ray
    Data actors), which maps the shard numbers to ``(position in the list, (kept, dropped))`` in
    any order; each shard is written as it comes back.
    """
    from posttrain.train.metrics import progress

    if not seeds:
        raise DataError("no seed tasks", file=cfg.datagen.input)
    s, out = cfg.datagen.synth, cfg.out
    check_manifest(cfg)
    ranges = shard_ranges(s.num_prompts, s.shard_size)
    todo = [j for j in range(len(ranges)) if not shard_path(out, j).is_file()]
    if s.max_shards:
        todo = todo[: s.max_shards]
    n_kept = n_dropped = 0
    with progress() as bar:  # the shared display: shards done, rate and ETA (posttrain.train.metrics)
        job = bar.add_task("data synth shards", total=len(ranges), completed=len(ranges) - len(todo), info="")
        if shard_results is not None:
            done: Iterable[tuple[int, tuple[list[Any], list[Any]]]] = shard_results(todo)
        else:
            assert tools is not None, "synthesize needs tools or shard_results"
            done = ((n, run_shard(cfg, tools, seeds, ranges[j], j)) for n, j in enumerate(todo))
        for n, (kept, dropped) in done:
            j = todo[n]
            write_jsonl(_dropped_path(out, j), dropped)
            write_jsonl(shard_path(out, j), kept)  # last: its presence marks the shard done
            n_kept, n_dropped = n_kept + len(kept), n_dropped + len(dropped)
            bar.update(job, advance=1, info=f"this run: {n_kept} kept, {n_dropped} dropped")
    finished = all(shard_path(out, j).is_file() for j in range(len(ranges)))
    summary = _counts(out, len(ranges))
    summary.update({"command": "synth", "shards": len(ranges), "finished": finished, "filter": filter_name(cfg)})
    if finished:
        kept_rows = [r for j in range(len(ranges)) for r in _read(shard_path(out, j))]
        removed = [r for j in range(len(ranges)) for r in _read(_dropped_path(out, j))]
        write_rows(out, "kept", kept_rows, cfg.datagen.output_format)
        write_jsonl(out / "removed.jsonl", removed)
    write_json(out / "summary.json", summary)
    return summary


def _manifest(cfg: Config) -> dict[str, Any]:
    """The settings a shard's rows depend on: a resume with other values would mix two runs."""
    from posttrain.config import to_dict

    synth = {k: v for k, v in to_dict(cfg.datagen.synth).items() if k != "max_shards"}
    return {"seed": cfg.seed, "model": cfg.model.path, "input": cfg.datagen.input, "synth": synth,
            "sampling": to_dict(cfg.sampling), "data": to_dict(cfg.data)}  # fmt: skip


def check_manifest(cfg: Config) -> None:
    """Write ``shards/manifest.json`` on the first run; refuse to resume shards written under other settings."""
    path = cfg.out / "shards" / "manifest.json"
    want = json.loads(json.dumps(_manifest(cfg)))
    if not path.is_file():
        write_json(path, want)
        return
    have = json.loads(path.read_text())
    changed = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    if changed:
        raise ConfigError(
            f"{path.parent} holds shards written with other settings ({', '.join(changed)} differ): "
            "resume with the same settings, or choose another output_dir",
            field="output_dir",
        )


def _read(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _counts(out: Path, shards: int) -> dict[str, Any]:
    kept, reasons = 0, Counter[str]()
    for j in range(shards):
        if shard_path(out, j).is_file():
            kept += len(_read(shard_path(out, j)))
            reasons.update(r["reason"] for r in _read(_dropped_path(out, j)))
    return {"rows": kept + sum(reasons.values()), "kept": kept, "dropped": dict(sorted(reasons.items()))}


def rip_scorer(cfg: Config) -> Callable[[list[str], list[str]], list[float]]:
    from posttrain.rewards.reward_model import RewardModelComponent

    rm = RewardModelComponent(None, cfg.datagen.synth.reward_model, cfg.model.dtype, device=cfg.model.device,  # type: ignore[arg-type]
                              field="datagen.synth.reward_model")  # fmt: skip

    def score(prompts: list[str], responses: list[str]) -> list[float]:
        examples = [Example(id=f"rip-{i}", prompt=p) for i, p in enumerate(prompts)]
        return [float(x) for x in rm.score(examples, list(prompts), responses)]  # type: ignore[arg-type]

    return score
