"""GRPO seconds per step and reward per step: posttrain against TRL's GRPOTrainer.

Same SFT checkpoint (default: the quickstart's, `runs/quickstart/sft/final`),
same prompts distribution, 16 prompts x 8 samples per step, max 48 new tokens,
T = 1, lr 5e-5 constant, Adam betas (0.9, 0.99), grad clip 1, no KL, group std
normalisation, token-level loss over the batch (TRL's "dapo"), truncated
completions masked, one update per batch, fp32, same thread count. Each engine
runs in its own process, alternating. Seconds per step: TRL's time between
step begin and end (generation, scoring and update); posttrain's generation
plus update time of each iteration. Run in the benchmark environment:

    .bench-venv/bin/python bench/grpo_vs_trl.py --steps 20 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TASK, median, side_by_side, step_timer, versions  # noqa: E402

PROMPTS, G, MAX_NEW, LR = 16, 8, 48, 5e-5


def train_posttrain(
    model: str, steps: int, packing: bool, extra: list[str] | None = None, out: Path | None = None
) -> Path:
    """Run posttrain's GRPO with the benchmark's settings; return its output directory."""
    from posttrain.config import load_config
    from posttrain.recipes.grpo import train_grpo

    out = out or Path(tempfile.mkdtemp())
    cfg = load_config(None, [
        f"model.path={model}", f"output_dir={out}", f"train.max_steps={steps}", "train.micro_batch_size=128",
        f"optim.lr={LR}", "optim.beta2=0.99", f"rollout.prompts_per_step={PROMPTS}", f"rollout.samples_per_prompt={G}",
        f"sampling.max_new_tokens={MAX_NEW}", "grpo.drop_uniform_groups=false", "grpo.overlong=mask",
        f"data.arithmetic.num_operands={TASK.num_operands}", f"data.arithmetic.digits={TASK.digits}",
        f"train.packing={packing}", *(extra or []),
    ])  # fmt: skip
    train_grpo(cfg)
    return out


def run_posttrain(model: str, steps: int, packing: bool = False) -> dict[str, float]:
    from posttrain.train.metrics import read_metrics

    records = read_metrics(train_posttrain(model, steps, packing) / "metrics.jsonl")
    seconds = [r["gen_seconds"] + r["step_seconds"] for r in records[2:]]
    return {"seconds_per_step": statistics.median(seconds), "reward": statistics.mean(r["reward"] for r in records)}


def train_trl(model: str, steps: int, callbacks: list[Any]) -> Any:
    """Run TRL's GRPOTrainer with the benchmark's settings; return the trainer."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from posttrain.tasks.arithmetic import ArithmeticTask, extract_answer

    def reward(completions: list[str], answer: list[str], **_: object) -> list[float]:
        return [float(extract_answer(c) == a) for c, a in zip(completions, answer)]

    rows = [{"prompt": e.prompt, "answer": e.answer} for e in ArithmeticTask(TASK).examples("train", 4096, seed=0)]
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(), max_steps=steps, per_device_train_batch_size=PROMPTS * G, num_generations=G,
        max_completion_length=MAX_NEW, temperature=1.0, top_p=1.0, learning_rate=LR, lr_scheduler_type="constant",
        adam_beta2=0.99, max_grad_norm=1.0, beta=0.0, loss_type="dapo", scale_rewards="group",
        mask_truncated_completions=True, num_iterations=1, use_cpu=True, report_to=[], save_strategy="no",
        logging_steps=1, seed=0,
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model), reward_funcs=[reward], args=args,
        train_dataset=Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained(model),
        callbacks=callbacks,
    )  # fmt: skip
    trainer.train()
    return trainer


def run_trl(model: str, steps: int) -> dict[str, float]:
    timer = step_timer()
    trainer = train_trl(model, steps, [timer])
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {"seconds_per_step": statistics.median(timer.times[2:]), "reward": statistics.mean(rewards)}


def main() -> None:
    def add_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default="runs/quickstart/sft/final")
        p.add_argument("--steps", type=int, default=20)
        # posttrain's train.packing; TRL's GRPOTrainer has no padding-free update to match it with
        p.add_argument("--packing", action="store_true")

    done = side_by_side(
        {"posttrain": lambda a: run_posttrain(a.model, a.steps, a.packing), "trl": lambda a: run_trl(a.model, a.steps)},
        add_args,
    )
    if done is None:
        return
    args, runs = done
    print(f"{versions()}; threads {args.threads}; {args.rounds} rounds of {args.steps} steps; packing {args.packing}")
    print("| engine | seconds per step (median) | mean reward per step |\n|---|---|---|")
    for name, label in (("posttrain", "posttrain"), ("trl", "TRL GRPOTrainer")):
        print(f"| {label} | {median(runs[name], 'seconds_per_step'):.3f} | {median(runs[name], 'reward'):.3f} |")
    ratio = median(runs["trl"], "seconds_per_step") / median(runs["posttrain"], "seconds_per_step")
    print(f"posttrain steps per second / TRL's = {ratio:.2f}x")


if __name__ == "__main__":
    main()
