"""A small teacher and a smaller student: SFT on teacher samples, on-policy distillation, GRPO, KDRL, CHORD.

Every method starts from the same briefly SFT-ed student and samples the same number of
training responses (``--iterations`` x ``--prompts`` x ``--samples``); the tokens each
actually sampled are reported beside its held-out pass@1 (the mean correctness of
``--eval-samples`` samples at temperature 1 on ``--eval-problems`` test problems). The
teacher is a larger tiny model trained by SFT on the same task for ``--teacher-steps``.
CPU only, no downloads:

    python bench/distill_compare.py --out runs/distill-compare              # 1 seed, ~10 min on 2 cores
    python bench/distill_compare.py --out runs/distill-compare --seeds 3

Writes ``OUT/results.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from posttrain.config import Config, load_config
from posttrain.data.tokenize import encode_prompt
from posttrain.models.io import load_model, load_tokenizer
from posttrain.recipes.distill import train_distill
from posttrain.recipes.grpo import train_grpo
from posttrain.recipes.sft import train_sft
from posttrain.records import SamplingParams
from posttrain.rollout.torch_engine import TorchEngine
from posttrain.tasks.registry import make_task
from posttrain.train.metrics import read_metrics

TASK = ["data.arithmetic.num_operands=3", "data.arithmetic.digits=1", "data.arithmetic.direct_fraction=0.5",
        "data.num_train=4000", "sampling.max_new_tokens=32", "threads=1"]  # fmt: skip
TEACHER = ["model.tiny.hidden_size=128", "model.tiny.num_layers=4", "model.tiny.num_heads=4",
           "model.tiny.intermediate_size=384"]  # fmt: skip
STUDENT = ["model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.num_heads=2",
           "model.tiny.intermediate_size=192"]  # fmt: skip
RL = ["optim.lr=1e-4", "optim.beta2=0.99", "optim.warmup_steps=2", "train.micro_batch_size=64"]
METHODS: dict[str, list[str]] = {
    "grpo": [],
    "distill": [],
    "kdrl": ["grpo.kd_coef=0.1", "grpo.kd_schedule=linear"],
    "grpo_chord": ["grpo.sft_coef=0.2", "grpo.sft_coef_end=0.0", "grpo.sft_schedule=linear"],
}


def cfg(*overrides: str) -> Config:
    return load_config(None, [*TASK, *overrides])


def pass_at_1(model_dir: Path, problems: int, samples: int, seed: int) -> float:
    """Mean correctness of ``samples`` temperature-1 samples of each of ``problems`` held-out problems."""
    c = cfg()
    tokenizer = load_tokenizer(model_dir)
    task = make_task(c.data, tokenizer)
    examples = task.examples("test", problems, 1234)
    prompts = [encode_prompt(tokenizer, task.prompt(ex)) for ex in examples]
    engine = TorchEngine(load_model(model_dir, device="cpu"), tokenizer)
    out = engine.generate([p for p in prompts for _ in range(samples)],
                          SamplingParams(1.0, 1.0, 0, c.sampling.max_new_tokens, seed=seed))  # fmt: skip
    return statistics.fmean(task.verify(examples[i // samples], o.text) for i, o in enumerate(out))


def sampled_tokens(run: Path, prompts: int, samples: int) -> int:
    records = {r["iteration"]: r for r in read_metrics(run / "metrics.jsonl") if "iteration" in r}
    return round(sum(r["completion_len"] * prompts * samples for r in records.values()))


def teacher_samples_sft(args: argparse.Namespace, teacher: Path, student: Path, out: Path, seed: int) -> dict[str, Any]:
    """Sequence-level KD: the teacher answers the training prompts, the student is SFT-ed on its answers."""
    c = cfg()
    tokenizer = load_tokenizer(teacher)
    task = make_task(c.data, tokenizer)
    n = args.iterations * args.prompts
    examples = task.examples("train", n, seed)
    prompts = [encode_prompt(tokenizer, task.prompt(ex)) for ex in examples]
    drawn = TorchEngine(load_model(teacher, device="cpu"), tokenizer).generate(
        [p for p in prompts for _ in range(args.samples)],
        SamplingParams(1.0, 1.0, 0, c.sampling.max_new_tokens, seed=seed),
    )
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": examples[i // args.samples].prompt, "completion": d.text} for i, d in enumerate(drawn)]
    (out / "teacher.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    final = train_sft(cfg(*RL, f"model.path={student}", "data.task=jsonl", f"data.path={out / 'teacher.jsonl'}",
                          f"train.max_steps={args.iterations}", f"train.batch_size={args.prompts * args.samples}",
                          f"output_dir={out}", f"seed={seed}"))  # fmt: skip
    return {"final": final, "tokens": sum(len(d.completion_ids) for d in drawn)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/distill-compare"))
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--teacher-steps", type=int, default=600)
    p.add_argument("--student-steps", type=int, default=200)
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--eval-problems", type=int, default=200)
    p.add_argument("--eval-samples", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(1)
    out: Path = args.out
    teacher = out / "teacher" / "final"
    if not teacher.is_dir():
        train_sft(cfg(*TEACHER, f"output_dir={out / 'teacher'}", f"train.max_steps={args.teacher_steps}",
                      "train.batch_size=32", "optim.lr=3e-3", "optim.warmup_steps=10", "optim.schedule=cosine"))  # fmt: skip
    student = out / "student" / "final"
    if not student.is_dir():
        train_sft(cfg(*STUDENT, f"output_dir={out / 'student'}", f"train.max_steps={args.student_steps}",
                      "train.batch_size=32", "optim.lr=3e-3", "optim.warmup_steps=5"))  # fmt: skip
    rollout = [f"rollout.prompts_per_step={args.prompts}", f"rollout.samples_per_prompt={args.samples}",
               f"train.max_steps={args.iterations}"]  # fmt: skip
    results: dict[str, Any] = {
        "teacher": pass_at_1(teacher, args.eval_problems, args.eval_samples, 0),
        "student_sft": pass_at_1(student, args.eval_problems, args.eval_samples, 0),
        "methods": {},
    }
    for seed in range(args.seeds):
        run = teacher_samples_sft(args, teacher, student, out / f"sft_teacher_samples-s{seed}", seed)
        results["methods"].setdefault("sft_teacher_samples", []).append(
            {
                "seed": seed,
                "pass@1": pass_at_1(run["final"], args.eval_problems, args.eval_samples, 0),
                "sampled_tokens": run["tokens"],
            }  # fmt: skip
        )
        for name, extra in METHODS.items():
            where = out / f"{name}-s{seed}"
            c = cfg(*RL, *rollout, *extra, f"model.path={student}", f"teacher.path={teacher}", f"output_dir={where}",
                    f"seed={seed}")  # fmt: skip
            final = train_distill(c) if name == "distill" else train_grpo(c)
            results["methods"].setdefault(name, []).append(
                {
                    "seed": seed,
                    "pass@1": pass_at_1(final, args.eval_problems, args.eval_samples, 0),
                    "sampled_tokens": sampled_tokens(where, args.prompts, args.samples),
                }  # fmt: skip
            )
    results["settings"] = vars(args) | {"out": str(args.out)}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"teacher pass@1 {results['teacher']:.3f}, student after SFT {results['student_sft']:.3f}")
    for name, runs in results["methods"].items():
        acc = [r["pass@1"] for r in runs]
        tokens = statistics.fmean(r["sampled_tokens"] for r in runs)
        print(f"{name:22s} pass@1 {statistics.fmean(acc):.3f} over {len(acc)} seed(s) {acc}, "
              f"sampled tokens {tokens:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
