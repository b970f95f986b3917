"""Wall-clock seconds for GRPO to reach a held-out reward target: posttrain against TRL's GRPOTrainer.

Same SFT checkpoint (default: the quickstart's), the same settings as
``bench/grpo_vs_trl.py`` (16 prompts x 8 samples, max 48 new tokens, T = 1, lr
5e-5, no KL, token-level loss, truncated completions masked), the same thread
count, engines alternating. Each run saves the policy every ``--every`` steps
outside its timed region; afterwards every saved policy is scored the same way,
by posttrain's sampler, on ``--problems`` held-out problems x ``--samples``
samples at T = 1 (mean verifier reward, the same seed for every policy). The
time to target is the training time (generation, scoring and update of every
step, summed) up to the first saved policy whose held-out reward reaches
``--target``. Run in the benchmark environment:

    .bench-venv/bin/python bench/grpo_time_to_target.py --steps 60 --every 10 --rounds 2
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TASK, side_by_side, step_timer, versions  # noqa: E402
from grpo_vs_trl import train_posttrain, train_trl  # noqa: E402


def heldout_reward(policy: Path, tokenizer_dir: str, problems: int, samples: int) -> float:
    """Mean T = 1 reward of ``policy`` on held-out problems, drawn with one fixed seed."""
    from posttrain.data.tokenize import encode_prompt
    from posttrain.models.io import load_model, load_tokenizer
    from posttrain.rollout.base import SamplingParams
    from posttrain.rollout.torch_engine import TorchEngine
    from posttrain.tasks.arithmetic import ArithmeticTask

    task, tok = ArithmeticTask(TASK), load_tokenizer(tokenizer_dir)
    examples = task.examples("test", problems, seed=0)
    prompts = [encode_prompt(tok, task.prompt(e)) for e in examples for _ in range(samples)]
    engine = TorchEngine(load_model(policy, "float32", "cpu"), tok, batch_size=256)
    out = engine.generate(prompts, SamplingParams(1.0, 1.0, 0, 48, seed=1234))
    return sum(task.verify(examples[i // samples], c.text) for i, c in enumerate(out)) / len(out)


def curve(saved: dict[int, Path], seconds: list[float], a: argparse.Namespace) -> dict[str, Any]:
    """Held-out reward at each saved step against the training seconds spent to reach it."""
    elapsed = [0.0, *itertools.accumulate(seconds)]
    points = [
        (step, elapsed[step], heldout_reward(path, a.model, a.problems, a.samples))
        for step, path in sorted(saved.items())
    ]
    hit = next((p for p in points if p[2] >= a.target), None)
    return {
        "points": points,
        "steps_to_target": hit[0] if hit else None,
        "seconds_to_target": hit[1] if hit else None,
    }


def posttrain_run(a: argparse.Namespace) -> dict[str, Any]:
    import posttrain.recipes.grpo as grpo_recipe
    from posttrain.train.metrics import read_metrics

    root, saved = Path(tempfile.mkdtemp()), {0: Path(a.model)}

    def save_policy(_root: Path, step: int, model: Any, *_: Any, **__: Any) -> None:  # untimed
        saved[step] = root / f"step_{step}"
        model.save_pretrained(saved[step])

    grpo_recipe.save_checkpoint = save_policy  # type: ignore[assignment]
    out = train_posttrain(a.model, a.steps, a.packing, extra=[f"train.save_every={a.every}"], out=root / "run")
    seconds = [r["gen_seconds"] + r["step_seconds"] for r in read_metrics(out / "metrics.jsonl")]
    return curve(saved, seconds, a)


def trl_run(a: argparse.Namespace) -> dict[str, Any]:
    from transformers import TrainerCallback

    root, saved, timer = Path(tempfile.mkdtemp()), {0: Path(a.model)}, step_timer()

    class SavePolicy(TrainerCallback):  # after the timer's on_step_end: untimed
        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
            if state.global_step % a.every == 0:
                saved[state.global_step] = root / f"step_{state.global_step}"
                model.save_pretrained(saved[state.global_step])

    train_trl(a.model, a.steps, [timer, SavePolicy()])
    return curve(saved, timer.times, a)


def main() -> None:
    def add_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default="runs/quickstart/sft/final")
        p.add_argument("--steps", type=int, default=60)
        p.add_argument("--every", type=int, default=10)
        p.add_argument("--target", type=float, default=0.85)
        p.add_argument("--problems", type=int, default=200)
        p.add_argument("--samples", type=int, default=4)
        p.add_argument("--packing", action="store_true")

    done = side_by_side({"posttrain": posttrain_run, "trl": trl_run}, add_args)
    if done is None:
        return
    args, runs = done
    print(f"{versions()}; threads {args.threads}; {args.rounds} rounds of {args.steps} steps; packing {args.packing}")
    print(f"held-out reward ({args.problems} problems x {args.samples} samples, T = 1) at each saved step:\n")
    print("| engine | round | " + " | ".join(f"step {p[0]}" for p in runs["posttrain"][0]["points"]) + " |")
    print("|---|---|" + "---|" * len(runs["posttrain"][0]["points"]))
    for name in ("posttrain", "trl"):
        for i, r in enumerate(runs[name]):
            cells = " | ".join(f"{p[2]:.3f} ({p[1]:.0f} s)" for p in r["points"])
            print(f"| {name} | {i + 1} | {cells} |")
    print(f"\ntarget {args.target}: seconds (steps) to the first saved policy at or above it")
    for name in ("posttrain", "trl"):
        hits = [f"{r['seconds_to_target']:.1f} s ({r['steps_to_target']})" if r["steps_to_target"] else "not reached"
                for r in runs[name]]  # fmt: skip
        print(f"- {name}: " + ", ".join(hits))


if __name__ == "__main__":
    main()
