"""SFT training tokens per second: posttrain against TRL's SFTTrainer, side by side.

Same model (default the quickstart's tiny Llama; ``--model``: bench/common.py's
``MODEL_HELP``), same 4,096 demonstrations, batch 64, completion-only loss, lr
2e-3, fp32, the same thread count; each engine runs in its own process,
alternating, and reports trained tokens (non-padding) divided by the summed time
of its optimiser steps (forward, backward, optimiser), and its peak resident
memory. Run in the benchmark environment (bench/common.py):

    .bench-venv/bin/python bench/sft_vs_trl.py --steps 60 --rounds 3

At real scale, ``--gsm8k train.jsonl`` trains on GSM8K worked solutions instead
(``steps x batch`` rows; the question as a chat user turn rendered once, as
posttrain renders it, and handed to both engines as the same string):

    .bench-venv/bin/python bench/sft_vs_trl.py --model smollm2 --gsm8k train.jsonl --steps 12 --batch 8 \\
        --max-seq-len 512 --lr 2e-5 --warmup 2 --rounds 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TINY, demonstrations, gsm8k_rows, median, side_by_side, step_timer, versions, write_jsonl  # noqa: E402

N, BATCH, LR = 4096, 64, 2e-3


def rows(a: argparse.Namespace) -> list[dict[str, str]]:
    """The demonstrations both engines train on: arithmetic, or ``steps x batch`` GSM8K rows."""
    if not a.gsm8k:
        return demonstrations(N)
    from posttrain.models.io import load_tokenizer

    return gsm8k_rows(a.gsm8k, a.steps * a.batch, load_tokenizer(a.model), "sft")


def run_posttrain(a: argparse.Namespace) -> dict[str, float]:
    from posttrain.config import load_config
    from posttrain.recipes.sft import train_sft
    from posttrain.train.metrics import read_metrics

    data = write_jsonl(Path(a.root) / "demos.jsonl", rows(a))
    out = Path(tempfile.mkdtemp())
    extra = [f"train.max_seq_len={a.max_seq_len}"] if a.max_seq_len else []
    cfg = load_config(None, [f"model.path={a.model}", "data.task=jsonl", f"data.path={data}", "data.chat_template=off",
                             f"train.max_steps={a.steps}", f"train.batch_size={a.batch}",
                             f"train.micro_batch_size={a.batch}", f"optim.lr={a.lr}", f"output_dir={out}",
                             f"train.packing={a.packing}", *extra, *a.set])  # fmt: skip
    train_sft(cfg)
    records = read_metrics(out / "metrics.jsonl")[a.warmup :]  # warm-up steps dropped
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in records)
    return {"tokens_per_s": sum(r["tokens"] for r in records) / seconds, "final_loss": records[-1]["loss"]}


def run_trl(a: argparse.Namespace) -> dict[str, float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model)
    ds = Dataset.from_list(rows(a))
    max_length = None if a.packing else a.max_seq_len or 1024
    args = SFTConfig(output_dir=tempfile.mkdtemp(), max_steps=a.steps, per_device_train_batch_size=a.batch,
                     learning_rate=a.lr, lr_scheduler_type="constant", use_cpu=True, report_to=[], save_strategy="no",
                     logging_steps=a.steps, completion_only_loss=True, packing=False, padding_free=a.packing,
                     max_length=max_length, dataloader_num_workers=0, seed=0,
                     gradient_checkpointing=a.gradient_checkpointing)  # fmt: skip
    timer = step_timer()
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[timer])
    lengths = [len(x) for x in trainer.train_dataset["input_ids"]]
    trainer.train()
    mean_len = sum(lengths) / len(lengths)  # TRL's sampler is random: count the expected tokens per step
    times = timer.times[a.warmup :]
    return {"tokens_per_s": mean_len * a.batch * len(times) / sum(times), "final_loss": float("nan")}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--lr", type=float, default=LR)
    p.add_argument("--warmup", type=int, default=5, help="first steps left out of the measure")
    p.add_argument("--max-seq-len", type=int, help="both engines' length limit (default: each one's own)")
    p.add_argument("--gsm8k", help="GSM8K train.jsonl: train on its worked solutions instead of arithmetic")
    # both engines without padding: posttrain's train.packing, TRL's padding_free (one flattened row)
    p.add_argument("--packing", action="store_true")


def main() -> None:
    done = side_by_side({"posttrain": run_posttrain, "trl": run_trl}, add_args, model=TINY)
    if done is None:
        return
    args, runs = done
    data = f"GSM8K ({args.steps * args.batch} rows)" if args.gsm8k else f"{N} arithmetic demonstrations"
    print(f"{versions()}; threads {args.threads}; model {args.model_name}; {data}; batch {args.batch}")
    print(f"{args.rounds} rounds of {args.steps} steps (first {args.warmup} dropped); packing {args.packing}")
    print("| engine | training tokens/s (median) | peak resident MiB |\n|---|---|---|")
    for name, label in (("posttrain", "posttrain"), ("trl", "TRL SFTTrainer")):
        print(f"| {label} | {median(runs[name], 'tokens_per_s'):,.0f} | {median(runs[name], 'peak_mib'):,.0f} |")
    ours, peer = median(runs["posttrain"], "tokens_per_s"), median(runs["trl"], "tokens_per_s")
    print(f"posttrain / TRL = {ours / peer:.2f}x")


if __name__ == "__main__":
    main()
