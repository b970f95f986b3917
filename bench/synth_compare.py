"""CoT-Self-Instruct on the built-in task: SFT on synthesized problems kept by answer consistency,
on all of them unfiltered, and on as many real (seed-like) problems; held-out pass@1 of each.

The pieces, all tiny models trained here on the CPU, no downloads:

- the target (solver): a tiny model SFT-ed on the arithmetic task's worked solutions
  (``--solver-steps``); it is ``datagen.synth.target_model``, the model whose ``K`` answers
  (``--answers``) decide answer consistency;
- the generator: the solver's weights (its context stretched to 640 positions) SFT-ed further
  to write arithmetic problems in the task's format from CoT-Self-Instruct's own prompts: the
  prompt is ``posttrain.datagen.synth.generation_prompt`` with 2 seed problems, the target a
  new training problem between the paper's tags, its worked solution, and its answer between
  the answer tags (``--generator-steps``). Sampled at ``--gen-temperature``, it sometimes
  garbles a tag (``unparseable``, ``missing_answer``) or a step: the noise the filter is there
  to remove;
- ``posttrain data synth`` (``run_data("synth", ...)``) writes ``--prompts`` generation prompts
  from the task's 256 seed problems, the generator samples a problem each, and the target
  answers each ``K`` times: ``kept.jsonl`` (majority answer = the generated one) and
  ``removed.jsonl`` (``answer_inconsistent``, ``unparseable``, ``missing_answer``).

Three SFT arms, each a fresh tiny student trained for the same ``--student-steps`` x
``--batch`` from the same initialisation per seed:

- ``kept``: the kept problems with their generated answers;
- ``unfiltered``: every parsed problem (kept + answer-inconsistent) with its generated answer;
- ``seed_like``: as many real training problems as ``kept`` holds, drawn with the seed.

So that the arms differ only in their problems and answers, every demonstration is the
task's worked format for the problem, ending in the row's answer (a wrong answer makes the
last step wrong): ``3+4-2=?`` with answer 6 trains ``3+4=7 / 7-2=6 / #6``. Synthesized
problems in the test split (the task's split is a hash of the problem) are removed from
every arm first, and counted. Held-out: ``--eval-problems`` test problems x
``--eval-samples`` samples at temperature 1; pass@1 per seed, and the mean over seeds
with a 95% bootstrap interval over problems (``posttrain.eval.passk.bootstrap_ci``).
One synthesis (seed 0) serves every seed; the seeds vary the student's initialisation,
its data order and the seed-like draw.

    python bench/synth_compare.py --out runs/synth-compare --seeds 3

Writes ``OUT/results.json`` and ``OUT/results.md``. The solver, the generator and the
synthesis are kept in ``OUT`` and reused by a rerun.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from posttrain.config import Config, load_config
from posttrain.data.tokenize import encode_prompt
from posttrain.datagen.synth import ANSWER, QUESTION, Seed, generation_prompt
from posttrain.eval.passk import bootstrap_ci
from posttrain.models.io import load_model, load_tokenizer
from posttrain.recipes.data import run_data
from posttrain.recipes.sft import train_sft
from posttrain.records import SamplingParams
from posttrain.rollout.torch_engine import TorchEngine
from posttrain.tasks.arithmetic import ArithmeticTask
from posttrain.tasks.rows import in_test_split

ARITH = ["data.arithmetic.num_operands=3", "data.arithmetic.digits=1", "data.arithmetic.operators=+-",
         "data.arithmetic.direct_fraction=0.0"]  # fmt: skip
TASK = [*ARITH, "data.num_train=4000", "sampling.max_new_tokens=32", "threads=1"]
SMALL = ["model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.num_heads=2",
         "model.tiny.intermediate_size=192"]  # fmt: skip
LONG = [
    *SMALL,
    "model.tiny.max_position_embeddings=640",
    "train.max_seq_len=640",
]  # the generator reads CoT-Self-Instruct's prompt
OPTIM = ["optim.lr=3e-3", "optim.warmup_steps=10", "optim.schedule=cosine"]
_EXPRESSION = re.compile(r"^(\d+)((?:[+-]\d+)+)=\?$")


def cfg(*overrides: str) -> Config:
    return load_config(None, [*TASK, *overrides])


def task() -> ArithmeticTask:
    return ArithmeticTask(cfg().data.arithmetic)


def demonstration(prompt: str, answer: str) -> str:
    """The task's worked solution of ``prompt`` ending in ``answer``: its last step states ``answer``."""
    m = _EXPRESSION.match(prompt.strip())
    if m is None:
        return f"#{answer}"  # not in the task's form: the answer alone
    value, steps = int(m.group(1)), []
    terms = re.findall(r"([+-])(\d+)", m.group(2))
    for n, (op, x) in enumerate(terms):
        new = value + int(x) if op == "+" else value - int(x)
        shown = answer if n == len(terms) - 1 else str(new)
        steps.append(f"{value}{op}{x}={shown}")
        value = new
    return "\n".join(steps) + f"\n#{answer}"


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def generator_rows(n: int, seeds: list[Seed]) -> list[dict[str, str]]:
    """CoT-Self-Instruct prompts (2 seeds each) and, as the target, a new training problem between the tags."""
    import random

    rng = random.Random(0)
    new = task().examples("train", n, 1)
    rows = []
    for ex in new:
        shown = rng.sample(seeds, 2)
        completion = (f"{QUESTION[0]}{str(ex.prompt).strip()}{QUESTION[1]}\n{ex.completion}\n"
                      f"{ANSWER[0]}\\boxed{{{ex.answer}}}{ANSWER[1]}")  # fmt: skip
        rows.append({"prompt": generation_prompt(shown, "verifiable"), "completion": completion})
    return rows


def longer_context(model: Path, dest: Path, positions: int) -> Path:
    """A copy of ``model`` allowed ``positions`` tokens (a RoPE Llama: no position weights to grow)."""
    import shutil

    if dest.is_dir():
        shutil.rmtree(dest)
    shutil.copytree(model, dest)
    config = json.loads((dest / "config.json").read_text())
    config["max_position_embeddings"] = positions
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    return dest


def heldout(out: Path, problems: int) -> tuple[Path, list[Any]]:
    examples = task().examples("test", problems, 1234)
    rows = [{"prompt": ex.prompt, "completion": ex.completion, "answer": ex.answer} for ex in examples]
    return write_jsonl(out / "heldout.jsonl", rows), examples


def per_problem_pass(model_dir: Path, examples: list[Any], samples: int, seed: int) -> list[float]:
    """Each held-out problem's share of correct samples at temperature 1 (its pass@1)."""
    t = task()
    tokenizer = load_tokenizer(model_dir)
    engine = TorchEngine(load_model(model_dir, device="cpu"), tokenizer)
    prompts = [encode_prompt(tokenizer, ex.prompt) for ex in examples]
    outs = engine.generate([p for p in prompts for _ in range(samples)], SamplingParams(1.0, 1.0, 0, 32, seed=seed))
    right = [0] * len(examples)
    for i, o in enumerate(outs):
        right[i // samples] += int(t.verify(examples[i // samples], o.text) == 1.0)
    return [r / samples for r in right]


def synthesize(args: argparse.Namespace, generator: Path, solver: Path) -> Path:
    where = args.out / "synth"
    if not (where / "kept.jsonl").is_file():
        run_data("synth", cfg(*ARITH, f"model.path={generator}", f"datagen.synth.target_model={solver}",
                              f"output_dir={where}", f"datagen.synth.num_prompts={args.prompts}",
                              "datagen.synth.shard_size=128", f"datagen.synth.answers={args.answers}",
                              "datagen.synth.filter=answer_consistency",
                              f"datagen.synth.gen_sampling.temperature={args.gen_temperature}",
                              "datagen.synth.gen_sampling.max_new_tokens=160", "sampling.max_new_tokens=32"))  # fmt: skip
    return where


def arms(synth: Path, n_seed_like: int | None, seed: int) -> tuple[dict[str, list[dict[str, str]]], dict[str, Any]]:
    """The three arms' SFT rows, and counts: what synth kept and dropped, test-split problems removed."""
    kept = [json.loads(line) for line in (synth / "kept.jsonl").read_text().splitlines()]
    removed = [json.loads(line) for line in (synth / "removed.jsonl").read_text().splitlines()]
    inconsistent = [r for r in removed if r["reason"] == "answer_inconsistent"]
    t = task()
    frac = t.cfg.test_fraction

    def usable(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
        return [{"prompt": r["prompt"], "completion": demonstration(r["prompt"], str(r["answer"]))}
                for r in rows if not in_test_split(r["prompt"].strip().removesuffix("=?"), frac)]  # fmt: skip

    keep, every = usable(kept), usable(kept + inconsistent)
    n = len(keep) if n_seed_like is None else n_seed_like
    real = [{"prompt": str(ex.prompt), "completion": str(ex.completion)} for ex in t.examples("train", n, 100 + seed)]

    def right(rows: list[dict[str, Any]]) -> float:
        ok = [str(r["answer"]) == _true(r["prompt"]) for r in rows]
        return sum(ok) / len(ok) if ok else 0.0

    counts = {"generation_prompts": len(kept) + len(removed), "kept": len(kept),
              "dropped": {k: sum(r["reason"] == k for r in removed) for k in sorted({r["reason"] for r in removed})},
              "answer_correct_kept": round(right(kept), 4), "answer_correct_unfiltered": round(right(kept + inconsistent), 4),
              "in_test_split_removed": {"kept": len(kept) - len(keep), "unfiltered": len(kept) + len(inconsistent) - len(every)},
              "distinct_problems_unfiltered": len({r["prompt"] for r in every})}  # fmt: skip
    return {"kept": keep, "unfiltered": every, "seed_like": real}, counts


def _true(prompt: str) -> str:
    m = _EXPRESSION.match(prompt.strip())
    if m is None:
        return "?"
    value = int(m.group(1))
    for op, x in re.findall(r"([+-])(\d+)", m.group(2)):
        value = value + int(x) if op == "+" else value - int(x)
    return str(value)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/synth-compare"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--solver-steps", type=int, default=600)
    p.add_argument("--solver-batch", type=int, default=64)
    p.add_argument("--generator-steps", type=int, default=150)
    p.add_argument("--generator-rows", type=int, default=2400)
    p.add_argument("--prompts", type=int, default=512, help="generation prompts given to data synth")
    p.add_argument("--gen-temperature", type=float, default=0.7, help="the generator's sampling temperature")
    p.add_argument("--answers", type=int, default=4, help="K: the target's answers per synthesized problem")
    p.add_argument("--student-steps", type=int, default=100)
    p.add_argument(
        "--student-init",
        choices=["solver", "scratch"],
        default="solver",
        help="each arm fine-tunes the solver (the target model itself), or a fresh tiny model",
    )
    p.add_argument("--student-lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--eval-problems", type=int, default=200)
    p.add_argument("--eval-samples", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(1)
    out: Path = args.out
    start = time.monotonic()
    test_file, examples = heldout(out, args.eval_problems)
    solver = out / "solver" / "final"
    if not solver.is_dir():
        train_sft(cfg(*SMALL, *OPTIM, f"output_dir={out / 'solver'}", f"train.max_steps={args.solver_steps}",
                      f"train.batch_size={args.solver_batch}"))  # fmt: skip
    generator = out / "generator" / "final"
    if not generator.is_dir():
        seeds = [Seed(str(ex.prompt).strip(), ex.answer) for ex in task().examples("train", 256, 0)]
        rows = write_jsonl(out / "generator" / "rows.jsonl", generator_rows(args.generator_rows, seeds))
        init = longer_context(solver, out / "generator" / "init", 640)
        train_sft(cfg(*LONG, *OPTIM, f"model.path={init}", "data.task=jsonl", f"data.path={rows}",
                      f"data.eval_path={test_file}",
                      f"output_dir={out / 'generator'}", f"train.max_steps={args.generator_steps}",
                      "train.batch_size=16"))  # fmt: skip
    synth = synthesize(args, generator, solver)
    timings = {"setup_and_synth_s": round(time.monotonic() - start, 1)}
    results: dict[str, Any] = {"solver": statistics.fmean(per_problem_pass(solver, examples, args.eval_samples, 0)),
                               "arms": {}, "timings": timings}  # fmt: skip
    for seed in range(args.seeds):
        data, counts = arms(synth, None, seed)
        results["synth"] = counts
        for name, rows in data.items():
            if not rows:  # nothing kept: no student to train (the table says so)
                results["arms"].setdefault(name, [])
                continue
            path = write_jsonl(out / f"{name}-s{seed}" / "train.jsonl", rows)
            init = [f"model.path={solver}"] if args.student_init == "solver" else SMALL
            final = train_sft(cfg(*init, f"optim.lr={args.student_lr}", "optim.warmup_steps=5", "data.task=jsonl",
                                  f"data.path={path}", f"data.eval_path={test_file}",
                                  f"output_dir={out / f'{name}-s{seed}'}", f"train.max_steps={args.student_steps}",
                                  f"train.batch_size={min(args.batch, len(rows))}", f"seed={seed}"))  # fmt: skip
            scores = per_problem_pass(final, examples, args.eval_samples, seed)
            results["arms"].setdefault(name, []).append({"seed": seed, "rows": len(rows), "per_problem": scores,
                                                         "pass@1": statistics.fmean(scores)})  # fmt: skip
        timings["total_s"] = round(time.monotonic() - start, 1)
        write_outputs(out, results, args)  # after every seed, so a cut-short run keeps its numbers


def table(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = ["| arm | rows | seeds | held-out pass@1 (mean over seeds) | 95% CI (bootstrap over problems) | per seed |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name, runs in results["arms"].items():
        if not runs:
            lines.append(f"| {name} | 0 | - | - | - | - |")
            continue
        pooled = [statistics.fmean(v) for v in zip(*(r["per_problem"] for r in runs))]
        lo, hi = bootstrap_ci(pooled, iters=2000, seed=0)
        rows = ", ".join(sorted({str(r["rows"]) for r in runs}))
        per_seed = ", ".join(f"{r['pass@1']:.3f}" for r in runs)
        lines.append(
            f"| {name} | {rows} | {len(runs)} | {statistics.fmean(pooled):.3f} | [{lo:.3f}, {hi:.3f}] | {per_seed} |"
        )
    s = results["synth"]
    notes = [
        f"target (solver) held-out pass@1: {results['solver']:.3f}",
        f"data synth: {s['generation_prompts']} generation prompts, kept {s['kept']}, dropped {s['dropped']}; "
        f"generated answer correct: {s['answer_correct_kept']:.3f} of kept, {s['answer_correct_unfiltered']:.3f} "
        f"of unfiltered; removed as test-split problems: {s['in_test_split_removed']}; "
        f"distinct problems (unfiltered): {s['distinct_problems_unfiltered']}",
        f"students: {args.student_steps} steps x batch {args.batch}; held-out: {args.eval_problems} test problems x "
        f"{args.eval_samples} samples at T=1",
        f"time: {results['timings']}",
    ]
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def write_outputs(out: Path, results: dict[str, Any], args: argparse.Namespace) -> None:
    results["settings"] = vars(args) | {"out": str(args.out)}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    text = table(results, args)
    (out / "results.md").write_text(f"# CoT-Self-Instruct: kept vs unfiltered vs seed-like\n\n{text}")
    print(text)


if __name__ == "__main__":
    main()
