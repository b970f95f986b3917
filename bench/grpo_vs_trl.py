"""GRPO seconds per step and reward per step: posttrain against TRL's GRPOTrainer.

Same SFT checkpoint (default: the quickstart's, `runs/quickstart/sft/final`),
same prompts distribution, 16 prompts x 8 samples per step, max 48 new tokens,
T = 1, lr 5e-5 constant, Adam betas (0.9, 0.99), grad clip 1, no KL, group std
normalisation, token-level loss over the batch (TRL's "dapo"), truncated
completions masked (``--keep-truncated``: kept in the loss on both sides), one
update per batch, fp32 (``--bf16``: bf16 mixed precision on both sides; posttrain
also samples from a bf16 copy), same thread count. Each engine
runs in its own process, alternating. Seconds per step: TRL's time between
step begin and end (generation, scoring and update); posttrain's generation
plus update time of each iteration; and each engine's peak resident memory. Run
in the benchmark environment:

    .bench-venv/bin/python bench/grpo_vs_trl.py --steps 20 --rounds 3

At real scale (``--model``: bench/common.py's ``MODEL_HELP``), ``--gsm8k
train.jsonl`` takes GSM8K questions as prompts (rendered once as a chat user
turn, the same string for both engines) scored by posttrain's last-number
verifier in both:

    .bench-venv/bin/python bench/grpo_vs_trl.py --model smollm2 --gsm8k train.jsonl --steps 3 --warmup 1 \
        --prompts 4 --samples 4 --max-new-tokens 64 --lr 3e-6 --rounds 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TASK, gsm8k_rows, median, side_by_side, step_timer, versions, write_jsonl  # noqa: E402

PROMPTS, G, MAX_NEW, LR = 16, 8, 48, 5e-5


@dataclass(frozen=True)
class Settings:
    """What a step does; the defaults are the tiny model's benchmark. ``gsm8k``: a train.jsonl to prompt from."""

    prompts: int = PROMPTS
    samples: int = G
    max_new: int = MAX_NEW
    lr: float = LR
    gsm8k: str | None = None
    checkpointing: bool = False  # TRL's gradient_checkpointing (posttrain's comes through --set)
    keep_truncated: bool = False  # truncated completions stay in the loss (default: masked on both sides)
    bf16: bool = False  # bf16 mixed precision on both sides (TRL's bf16; posttrain's below)

    @staticmethod
    def of(a: argparse.Namespace) -> Settings:
        return Settings(
            a.prompts, a.samples, a.max_new_tokens, a.lr, a.gsm8k, a.gradient_checkpointing, a.keep_truncated, a.bf16
        )


def gsm8k_prompts(model: str, s: Settings, steps: int) -> list[dict[str, str]]:
    """The ``steps x prompts`` GSM8K prompts both engines draw from, rendered for ``model``'s chat template."""
    from posttrain.models.io import load_tokenizer

    assert s.gsm8k is not None
    return gsm8k_rows(s.gsm8k, steps * s.prompts, load_tokenizer(model), "grpo")


def train_posttrain(
    model: str, steps: int, packing: bool, extra: list[str] | None = None, out: Path | None = None,
    s: Settings = Settings(),
) -> Path:  # fmt: skip
    """Run posttrain's GRPO with the benchmark's settings; return its output directory."""
    from posttrain.config import load_config
    from posttrain.recipes.grpo import train_grpo

    out = out or Path(tempfile.mkdtemp())
    if s.gsm8k:  # plain {prompt, answer} rows, already rendered: the last-number verifier scores them
        data = write_jsonl(out.with_name(out.name + "-prompts.jsonl"), gsm8k_prompts(model, s, steps))
        task = ["data.task=jsonl", f"data.path={data}", "data.chat_template=off"]
    else:
        task = [f"data.arithmetic.num_operands={TASK.num_operands}", f"data.arithmetic.digits={TASK.digits}"]
    if s.bf16:  # fp32 weights, bf16 matmuls in the update, sampling from a bf16 copy
        task += ["train.mixed_precision=bf16", "engine.dtype=bfloat16"]
    cfg = load_config(None, [
        f"model.path={model}", f"output_dir={out}", f"train.max_steps={steps}", "train.micro_batch_size=128",
        f"optim.lr={s.lr}", "optim.beta2=0.99", f"rollout.prompts_per_step={s.prompts}",
        f"rollout.samples_per_prompt={s.samples}", f"sampling.max_new_tokens={s.max_new}",
        "grpo.drop_uniform_groups=false", f"grpo.overlong={'none' if s.keep_truncated else 'mask'}", *task, f"train.packing={packing}", *(extra or []),
    ])  # fmt: skip
    train_grpo(cfg)
    return out


def run_posttrain(
    model: str, steps: int, packing: bool = False, s: Settings = Settings(), warmup: int = 2,
    extra: list[str] | None = None,
) -> dict[str, float]:  # fmt: skip
    from posttrain.train.metrics import read_metrics

    records = read_metrics(train_posttrain(model, steps, packing, extra, s=s) / "metrics.jsonl")
    seconds = [r["gen_seconds"] + r["step_seconds"] for r in records[warmup:]]
    return {"seconds_per_step": statistics.median(seconds), "reward": statistics.mean(r["reward"] for r in records)}


def train_trl(model: str, steps: int, callbacks: list[Any], s: Settings = Settings()) -> Any:
    """Run TRL's GRPOTrainer with the benchmark's settings; return the trainer."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from posttrain.tasks.arithmetic import ArithmeticTask, extract_answer
    from posttrain.tasks.verifiers import get_verifier

    check = get_verifier("last_number").check

    def reward(completions: list[str], answer: list[str], **_: object) -> list[float]:
        if s.gsm8k:  # posttrain's verifier, so both engines score the same text the same way
            return [check(a, c) for c, a in zip(completions, answer)]
        return [float(extract_answer(c) == a) for c, a in zip(completions, answer)]

    rows: list[dict[str, Any]]
    if s.gsm8k:
        rows = gsm8k_prompts(model, s, steps)
    else:
        rows = [{"prompt": e.prompt, "answer": e.answer} for e in ArithmeticTask(TASK).examples("train", 4096, seed=0)]
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(), max_steps=steps, per_device_train_batch_size=s.prompts * s.samples,
        num_generations=s.samples, max_completion_length=s.max_new, temperature=1.0, top_p=1.0, learning_rate=s.lr,
        lr_scheduler_type="constant", adam_beta2=0.99, max_grad_norm=1.0, beta=0.0, loss_type="dapo", scale_rewards="group",
        mask_truncated_completions=not s.keep_truncated, num_iterations=1, use_cpu=True, report_to=[], save_strategy="no",
        logging_steps=1, seed=0, gradient_checkpointing=s.checkpointing, bf16=s.bf16,
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model), reward_funcs=[reward], args=args,
        train_dataset=Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained(model),
        callbacks=callbacks,
    )  # fmt: skip
    trainer.train()
    return trainer


def run_trl(model: str, steps: int, s: Settings = Settings(), warmup: int = 2) -> dict[str, float]:
    timer = step_timer()
    trainer = train_trl(model, steps, [timer], s)
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {"seconds_per_step": statistics.median(timer.times[warmup:]), "reward": statistics.mean(rewards)}


def main() -> None:
    def add_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--steps", type=int, default=20)
        p.add_argument("--warmup", type=int, default=2, help="first steps left out of the seconds per step")
        p.add_argument("--prompts", type=int, default=PROMPTS, help="prompts per step")
        p.add_argument("--samples", type=int, default=G, help="samples per prompt")
        p.add_argument("--max-new-tokens", type=int, default=MAX_NEW)
        p.add_argument("--lr", type=float, default=LR)
        p.add_argument("--gsm8k", help="GSM8K train.jsonl: its questions as prompts instead of arithmetic")
        # posttrain's train.packing; TRL's GRPOTrainer has no padding-free update to match it with
        p.add_argument("--packing", action="store_true")
        # masked, a truncated sample adds nothing to the gradient: posttrain does not run it, TRL does
        p.add_argument("--keep-truncated", action="store_true", help="truncated completions stay in both losses")
        p.add_argument("--bf16", action="store_true", help="bf16 mixed precision on both sides (TRL's bf16=True)")

    done = side_by_side(
        {
            "posttrain": lambda a: run_posttrain(a.model, a.steps, a.packing, Settings.of(a), a.warmup, a.set),
            "trl": lambda a: run_trl(a.model, a.steps, Settings.of(a), a.warmup),
        },
        add_args,
        model="runs/quickstart/sft/final",
    )
    if done is None:
        return
    args, runs = done
    data = "GSM8K" if args.gsm8k else "arithmetic"
    print(f"{versions()}; threads {args.threads}; model {args.model_name}; {data} prompts")
    print(f"{args.rounds} rounds of {args.steps} steps (first {args.warmup} dropped) of {args.prompts} prompts x "
          f"{args.samples} samples x {args.max_new_tokens} new tokens; packing {args.packing}; "
          f"truncated {'kept' if args.keep_truncated else 'masked'}; {'bf16 mixed' if args.bf16 else 'fp32'}")  # fmt: skip
    print("| engine | seconds per step (median) | mean reward per step | peak resident MiB |\n|---|---|---|---|")
    for name, label in (("posttrain", "posttrain"), ("trl", "TRL GRPOTrainer")):
        print(f"| {label} | {median(runs[name], 'seconds_per_step'):.3f} | {median(runs[name], 'reward'):.3f} "
              f"| {median(runs[name], 'peak_mib'):,.0f} |")  # fmt: skip
    ratio = median(runs["trl"], "seconds_per_step") / median(runs["posttrain"], "seconds_per_step")
    print(f"posttrain steps per second / TRL's = {ratio:.2f}x")


if __name__ == "__main__":
    main()
