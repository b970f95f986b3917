"""A small teacher and a smaller student: SFT on teacher samples, on-policy distillation, GRPO, KDRL, CHORD.

Every method starts from the same briefly SFT-ed student and samples the same number of
training responses (``--iterations`` x ``--prompts`` x ``--samples``); the tokens each
actually sampled are reported beside its held-out pass@k: ``--eval-samples`` samples at
temperature 1 on each of ``--eval-problems`` test problems, k = 1, 2, 4, ... up to
``--eval-samples``, the unbiased estimator of Chen et al. 2021 (posttrain.eval.passk).
The teacher is a larger tiny model trained by SFT on the same task for ``--teacher-steps``.

Every ``--eval-every`` iterations a run saves a checkpoint (``train.save_every``), and
each is evaluated after the run, which gives the curve of held-out pass@1 against
sampled tokens. Checkpoints rather than ``posttrain compare``'s resumed segments,
because KDRL's and CHORD's linear schedules run to ``train.max_steps`` and a shorter
segment would change them. ``train.keep_checkpoints`` keeps all of a run's checkpoints
until it is evaluated (the default keeps two). For SFT on teacher samples, every teacher sample
is drawn before training; its curve counts the tokens of the teacher samples its steps
have consumed so far (a share of the total). CPU only, no downloads:

    python bench/distill_compare.py --out runs/distill-compare              # 1 seed
    python bench/distill_compare.py --out runs/distill-compare --seeds 3

On 2 shared cores the teacher's SFT takes most of the time (4 to 12 minutes, kept in
``OUT/teacher`` and reused by a rerun); each seed after it took 1 to 7 minutes.

Writes ``OUT/results.json``, ``OUT/results.md`` (the table) and ``OUT/distill-compare.png``
(held-out pass@1 against sampled tokens, mean over seeds with a band of one std).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from posttrain.config import Config, load_config
from posttrain.data.tokenize import encode_prompt
from posttrain.eval.passk import mean_pass_at_k, powers_of_two
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


def pass_at_k(model_dir: Path, problems: int, samples: int, seed: int) -> dict[str, float]:
    """Held-out pass@k, k = 1, 2, 4, ... <= ``samples``, from ``samples`` temperature-1 samples per problem.

    pass@1 is the mean correctness of the samples (the unbiased estimator at k = 1).
    """
    c = cfg()
    tokenizer = load_tokenizer(model_dir)
    task = make_task(c.data, tokenizer)
    examples = task.examples("test", problems, 1234)
    prompts = [encode_prompt(tokenizer, task.prompt(ex)) for ex in examples]
    engine = TorchEngine(load_model(model_dir, device="cpu"), tokenizer)
    out = engine.generate([p for p in prompts for _ in range(samples)],
                          SamplingParams(1.0, 1.0, 0, c.sampling.max_new_tokens, seed=seed))  # fmt: skip
    correct = [0] * problems
    for i, o in enumerate(out):
        correct[i // samples] += int(bool(task.verify(examples[i // samples], o.text)))
    scores = mean_pass_at_k([(samples, n) for n in correct], powers_of_two(samples))
    return {str(k): v for k, v in scores.items()}


def tokens_per_iteration(run: Path, prompts: int, samples: int) -> list[int]:
    """Sampled tokens of each iteration of an RL or distillation run, in order."""
    records = {r["iteration"]: r for r in read_metrics(run / "metrics.jsonl") if "iteration" in r}
    return [round(records[i]["completion_len"] * prompts * samples) for i in sorted(records)]


def evaluate_run(run: Path, final: Path, tokens: list[int], args: argparse.Namespace) -> list[dict[str, Any]]:
    """pass@k at every saved checkpoint and at the end, with the sampled tokens spent by then."""
    points = []
    for step in range(args.eval_every, args.iterations, args.eval_every) if args.eval_every else []:
        where = run / "checkpoints" / f"step_{step:06d}"
        points.append({"iteration": step, "sampled_tokens": sum(tokens[:step]),
                       "pass_at_k": pass_at_k(where, args.eval_problems, args.eval_samples, 0)})  # fmt: skip
    points.append({"iteration": args.iterations, "sampled_tokens": sum(tokens),
                   "pass_at_k": pass_at_k(final, args.eval_problems, args.eval_samples, 0)})  # fmt: skip
    shutil.rmtree(run / "checkpoints", ignore_errors=True)
    return points


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
                          f"train.save_every={args.eval_every}", "train.keep_checkpoints=1000000",
                          f"output_dir={out}", f"seed={seed}"))  # fmt: skip
    total = sum(len(d.completion_ids) for d in drawn)
    return {"final": final, "tokens": [round(total / args.iterations)] * args.iterations}


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
    p.add_argument("--eval-every", type=int, default=10, help="iterations between evaluated checkpoints; 0: end only")
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
               f"train.max_steps={args.iterations}", f"train.save_every={args.eval_every}",
               "train.keep_checkpoints=1000000"]  # fmt: skip
    results: dict[str, Any] = {
        "teacher": pass_at_k(teacher, args.eval_problems, args.eval_samples, 0),
        "student_sft": pass_at_k(student, args.eval_problems, args.eval_samples, 0),
        "methods": {},
    }
    for seed in range(args.seeds):
        where = out / f"sft_teacher_samples-s{seed}"
        run = teacher_samples_sft(args, teacher, student, where, seed)
        add_run(results, "sft_teacher_samples", seed, evaluate_run(where, run["final"], run["tokens"], args))
        write_outputs(out, results, args)
        for name, extra in METHODS.items():
            where = out / f"{name}-s{seed}"
            c = cfg(*RL, *rollout, *extra, f"model.path={student}", f"teacher.path={teacher}", f"output_dir={where}",
                    f"seed={seed}")  # fmt: skip
            final = train_distill(c) if name == "distill" else train_grpo(c)
            tokens = tokens_per_iteration(where, args.prompts, args.samples)
            add_run(results, name, seed, evaluate_run(where, final, tokens, args))
            write_outputs(out, results, args)  # after every run, so a cut-short comparison keeps its numbers


def add_run(results: dict[str, Any], name: str, seed: int, points: list[dict[str, Any]]) -> None:
    last = points[-1]
    row = {"seed": seed, "pass_at_k": last["pass_at_k"], "pass@1": last["pass_at_k"]["1"],
           "sampled_tokens": last["sampled_tokens"], "points": points}  # fmt: skip
    results["methods"].setdefault(name, []).append(row)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(results: dict[str, Any], args: argparse.Namespace) -> str:
    """Markdown: final held-out pass@k per method, mean ± sample std over seeds, and per seed pass@1."""
    ks = list(results["teacher"])
    head = " | ".join(f"pass@{k}" for k in ks)
    lines = [f"| model / method | seeds | {head} | pass@1 per seed | sampled tokens (mean) |",
             "|---|---|" + "---|" * len(ks) + "---|---|"]  # fmt: skip
    for name, key in (("teacher", "teacher"), ("student after SFT (start)", "student_sft")):
        lines.append(f"| {name} | - | " + " | ".join(f"{results[key][k]:.3f}" for k in ks) + " | - | - |")
    for name, runs in results["methods"].items():
        cells = []
        for k in ks:
            m, sd = mean_std([r["pass_at_k"][k] for r in runs])
            cells.append(f"{m:.3f}" if len(runs) == 1 else f"{m:.3f} ± {sd:.3f}")
        per_seed = ", ".join(f"{r['pass@1']:.3f}" for r in runs)
        tokens = statistics.fmean(r["sampled_tokens"] for r in runs)
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + f" | {per_seed} | {tokens:.0f} |")
    notes = [
        f"Held-out: {args.eval_problems} test problems x {args.eval_samples} samples at T=1; pass@k unbiased "
        "(Chen et al. 2021). Mean ± sample std over seeds.",
        f"Every method: {args.iterations} iterations x {args.prompts} prompts x {args.samples} samples = "
        f"{args.iterations * args.prompts * args.samples} sampled responses from the same SFT-ed student; "
        "SFT on teacher samples: the teacher's responses to as many training prompts, one pass.",
    ]
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """Held-out pass@1 against sampled tokens; each curve starts at the shared student and is a mean over seeds."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    start = results["student_sft"]["1"]
    for name, runs in results["methods"].items():
        n = min(len(r["points"]) for r in runs)
        xs = [0.0] + [statistics.fmean(r["points"][i]["sampled_tokens"] for r in runs) for i in range(n)]
        stats = [(start, 0.0)] + [mean_std([r["points"][i]["pass_at_k"]["1"] for r in runs]) for i in range(n)]
        means = [m for m, _ in stats]
        ax.plot(xs, means, marker=".", label=name)
        ax.fill_between(xs, [m - d for m, d in stats], [m + d for m, d in stats], alpha=0.15)
    ax.axhline(results["teacher"]["1"], color="grey", linestyle="--", linewidth=1, label="teacher")
    ax.scatter([0], [start], color="black", zorder=3, label="student after SFT")
    ax.set_xlabel("sampled training tokens (SFT on teacher samples: teacher tokens consumed)")
    ax.set_ylabel("held-out pass@1")
    seeds = min(len(runs) for runs in results["methods"].values())
    ax.set_title(f"distillation and RL from one student (mean ± std over {seeds} seed(s))")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_outputs(out: Path, results: dict[str, Any], args: argparse.Namespace) -> None:
    results["settings"] = vars(args) | {"out": str(args.out)}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    text = table(results, args)
    (out / "results.md").write_text(f"# distillation comparison\n\n{text}\n![](distill-compare.png)\n")
    plot(results, out / "distill-compare.png")
    print(text)


if __name__ == "__main__":
    main()
