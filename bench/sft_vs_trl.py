"""SFT training tokens per second: posttrain against TRL's SFTTrainer, side by side.

Same model (the quickstart's tiny Llama), same 4,096 demonstrations, batch 64,
completion-only loss, lr 2e-3, fp32, the same thread count; each engine runs in
its own process, alternating, and reports trained tokens (non-padding) divided
by the summed time of its optimiser steps (forward, backward, optimiser). Run in
the benchmark environment (bench/common.py):

    .bench-venv/bin/python bench/sft_vs_trl.py --steps 60 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import demonstrations, median, model_dir, side_by_side, step_timer, versions  # noqa: E402

N, BATCH, LR = 4096, 64, 2e-3


def run_posttrain(root: Path, steps: int, packing: bool) -> dict[str, float]:
    from posttrain.config import load_config
    from posttrain.recipes.sft import train_sft
    from posttrain.train.metrics import read_metrics

    data = root / "demos.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in demonstrations(N)))
    out = Path(tempfile.mkdtemp())
    cfg = load_config(None, [f"model.path={model_dir(root)}", "data.task=jsonl", f"data.path={data}",
                             f"train.max_steps={steps}", f"train.batch_size={BATCH}", f"train.micro_batch_size={BATCH}",
                             f"optim.lr={LR}", f"output_dir={out}", f"train.packing={packing}"])  # fmt: skip
    train_sft(cfg)
    records = read_metrics(out / "metrics.jsonl")[5:]  # warm-up steps dropped
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in records)
    return {"tokens_per_s": sum(r["tokens"] for r in records) / seconds, "final_loss": records[-1]["loss"]}


def run_trl(root: Path, steps: int, packing: bool) -> dict[str, float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    path = model_dir(root)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ds = Dataset.from_list(demonstrations(N))
    args = SFTConfig(output_dir=tempfile.mkdtemp(), max_steps=steps, per_device_train_batch_size=BATCH,
                     learning_rate=LR, lr_scheduler_type="constant", use_cpu=True, report_to=[], save_strategy="no",
                     logging_steps=steps, completion_only_loss=True, packing=False, padding_free=packing,
                     max_length=None if packing else 1024, dataloader_num_workers=0,
                     seed=0)  # fmt: skip
    timer = step_timer()
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[timer])
    lengths = [len(x) for x in trainer.train_dataset["input_ids"]]
    trainer.train()
    mean_len = sum(lengths) / len(lengths)  # TRL's sampler is random: count the expected tokens per step
    times = timer.times[5:]
    return {"tokens_per_s": mean_len * BATCH * len(times) / sum(times), "final_loss": float("nan")}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=60)
    # both engines without padding: posttrain's train.packing, TRL's padding_free (one flattened row)
    p.add_argument("--packing", action="store_true")


def main() -> None:
    done = side_by_side(
        {
            "posttrain": lambda a: run_posttrain(Path(a.root), a.steps, a.packing),
            "trl": lambda a: run_trl(Path(a.root), a.steps, a.packing),
        },
        add_args,
    )
    if done is None:
        return
    args, runs = done
    ours, peer = median(runs["posttrain"], "tokens_per_s"), median(runs["trl"], "tokens_per_s")
    print(f"{versions()}; threads {args.threads}; {args.rounds} rounds of {args.steps} steps; packing {args.packing}")
    print(
        f"| engine | training tokens/s (median) |\n|---|---|\n| posttrain | {ours:,.0f} |\n| TRL SFTTrainer | {peer:,.0f} |"
    )
    print(f"posttrain / TRL = {ours / peer:.2f}x")


if __name__ == "__main__":
    main()
