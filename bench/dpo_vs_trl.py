"""DPO preference pairs per second: posttrain against TRL's DPOTrainer, side by side.

Same model (default the quickstart's tiny Llama; ``--model``: bench/common.py's
``MODEL_HELP``), same 960 arithmetic pairs (chosen: a worked demonstration;
rejected: the same with a wrong final answer), sigmoid loss, beta 0.1, 32 pairs
per step, lr 5e-5 constant, fp32, same thread count, 30 steps (one epoch). Pairs
per second = pairs / wall time of the whole training job on each side: loading
the model, tokenising the pairs, the reference log-probabilities (TRL computes
them in every step, posttrain once up front, cached on disk; the cache starts
empty so the measure includes computing it), the steps and saving the trained
model. Both train on every pair (posttrain's ``data.heldout_fraction=0``: no held-out
split and no held-out pass, which TRL's side does not run either). Each engine's
peak resident memory is reported too. ``--bf16``: bf16 mixed precision on both sides
(posttrain's ``train.mixed_precision=bf16``, TRL's ``bf16=True``). ``--packing`` packs
posttrain's pairs (``train.packing``); TRL 1.x's DPOTrainer turns its
``padding_free`` off ("temporarily unavailable after a refactor"), so TRL pads
either way. Run in the benchmark environment:

    .bench-venv/bin/python bench/dpo_vs_trl.py --rounds 3

At real scale, ``--gsm8k train.jsonl`` uses ``steps x batch`` GSM8K pairs (chosen:
the worked solution; rejected: the same with its final number changed; the
question rendered once as a chat user turn, the same string for both engines):

    .bench-venv/bin/python bench/dpo_vs_trl.py --model smollm2 --gsm8k train.jsonl --steps 8 --batch 4 \\
        --max-seq-len 512 --rounds 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TASK, TINY, gsm8k_rows, median, side_by_side, versions, write_jsonl  # noqa: E402

STEPS, BATCH, LR, BETA = 30, 32, 5e-5, 0.1


def pairs(a: argparse.Namespace) -> list[dict[str, str]]:
    """``steps x batch`` pairs: arithmetic, or GSM8K with ``--gsm8k``."""
    n = a.steps * a.batch
    if a.gsm8k:
        from posttrain.models.io import load_tokenizer

        return gsm8k_rows(a.gsm8k, n, load_tokenizer(a.model), "dpo")
    from posttrain.tasks.arithmetic import ArithmeticTask

    rows = []
    for e in ArithmeticTask(TASK).examples("train", n, seed=0):
        assert e.completion is not None and e.answer is not None
        wrong = e.completion[: -len(e.answer)] + str(int(e.answer) + 1)
        rows.append({"prompt": str(e.prompt), "chosen": e.completion, "rejected": wrong})
    return rows


def run_posttrain(a: argparse.Namespace) -> dict[str, float]:
    from posttrain.config import load_config
    from posttrain.recipes.dpo import train_dpo

    rows = pairs(a)
    data = write_jsonl(Path(a.root) / "pairs.jsonl", rows)
    out = Path(tempfile.mkdtemp())
    extra = [f"train.max_seq_len={a.max_seq_len}"] if a.max_seq_len else []
    extra += ["train.mixed_precision=bf16"] if a.bf16 else []
    cfg = load_config(None, [
        f"model.path={a.model}", "data.task=jsonl", f"data.path={data}", "data.chat_template=off", f"output_dir={out}",
        f"train.max_steps={a.steps}", f"train.batch_size={a.batch}", f"train.micro_batch_size={a.batch}",
        f"optim.lr={LR}", "dpo.loss=sigmoid", f"dpo.beta={BETA}", f"dpo.cache_dir={out / 'ref'}",
        f"train.packing={a.packing}", "data.heldout_fraction=0", *extra, *a.set,
    ])  # fmt: skip
    start = time.perf_counter()  # train_dpo loads, tokenises, computes the reference, trains and saves
    train_dpo(cfg)
    return {"pairs_per_s": len(rows) / (time.perf_counter() - start)}


def run_trl(a: argparse.Namespace) -> dict[str, float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    rows = pairs(a)
    length = {"max_length": a.max_seq_len} if a.max_seq_len else {}
    start = time.perf_counter()  # the same job as posttrain's timed call: load, tokenise, train, save
    args = DPOConfig(
        output_dir=tempfile.mkdtemp(), max_steps=a.steps, per_device_train_batch_size=a.batch,
        learning_rate=LR, lr_scheduler_type="constant", beta=BETA, loss_type="sigmoid", use_cpu=True,
        report_to=[], save_strategy="no", logging_steps=len(rows), dataloader_num_workers=0, seed=0, **length,
        gradient_checkpointing=a.gradient_checkpointing, bf16=a.bf16,
    )  # fmt: skip
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(a.model), args=args, train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(a.model),
    )  # fmt: skip
    trainer.train()
    trainer.save_model()
    return {"pairs_per_s": len(rows) / (time.perf_counter() - start)}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--batch", type=int, default=BATCH, help="pairs per step")
    p.add_argument("--max-seq-len", type=int, help="both engines' length limit (default: each one's own)")
    p.add_argument("--gsm8k", help="GSM8K train.jsonl: pairs from its worked solutions instead of arithmetic")
    p.add_argument("--packing", action="store_true", help="posttrain's train.packing (TRL 1.x's DPO pads regardless)")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision on both sides (TRL's bf16=True)")


def main() -> None:
    done = side_by_side({"posttrain": run_posttrain, "trl": run_trl}, add_args, model=TINY)
    if done is None:
        return
    args, runs = done
    data = "GSM8K" if args.gsm8k else "arithmetic"
    print(f"{versions()}; threads {args.threads}; model {args.model_name}")
    packed = ("; posttrain packed" if args.packing else "") + ("; bf16 mixed precision" if args.bf16 else "")
    print(f"{args.rounds} rounds of {args.steps * args.batch} {data} pairs, {args.batch} a step{packed}")
    print("| engine | pairs/s (median) | peak resident MiB |\n|---|---|---|")
    for name, label in (("posttrain", "posttrain"), ("trl", "TRL DPOTrainer")):
        print(f"| {label} | {median(runs[name], 'pairs_per_s'):,.3g} | {median(runs[name], 'peak_mib'):,.0f} |")
    ours, peer = median(runs["posttrain"], "pairs_per_s"), median(runs["trl"], "pairs_per_s")
    print(f"posttrain / TRL = {ours / peer:.2f}x")


if __name__ == "__main__":
    main()
