"""DPO preference pairs per second: posttrain against TRL's DPOTrainer, side by side.

Same model (the quickstart's tiny Llama), same 960 arithmetic pairs (chosen: a
worked demonstration; rejected: the same with a wrong final answer), sigmoid
loss, beta 0.1, 32 pairs per step, lr 5e-5 constant, fp32, same thread count,
30 steps (one epoch). Pairs per second = 960 / wall time of the training call,
which includes the reference log-probabilities: TRL computes them in every step,
posttrain once up front (cached on disk; the cache is cleared before each run so
the measure includes computing it). Run in the benchmark environment:

    .bench-venv/bin/python bench/dpo_vs_trl.py --rounds 3
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TASK, median, model_dir, side_by_side, versions  # noqa: E402

PAIRS, BATCH, LR, BETA = 960, 32, 5e-5, 0.1


def pairs() -> list[dict[str, str]]:
    from posttrain.tasks.arithmetic import ArithmeticTask

    rows = []
    for e in ArithmeticTask(TASK).examples("train", PAIRS, seed=0):
        assert e.completion is not None and e.answer is not None
        wrong = e.completion[: -len(e.answer)] + str(int(e.answer) + 1)
        rows.append({"prompt": str(e.prompt), "chosen": e.completion, "rejected": wrong})
    return rows


def run_posttrain(root: Path) -> dict[str, float]:
    from posttrain.config import load_config
    from posttrain.recipes.dpo import train_dpo

    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in pairs()))
    out = Path(tempfile.mkdtemp())
    cfg = load_config(None, [
        f"model.path={model_dir(root)}", "data.task=jsonl", f"data.path={data}", f"output_dir={out}",
        f"train.max_steps={PAIRS // BATCH}", f"train.batch_size={BATCH}", f"train.micro_batch_size={BATCH}",
        f"optim.lr={LR}", "dpo.loss=sigmoid", f"dpo.beta={BETA}", f"dpo.cache_dir={out / 'ref'}",
    ])  # fmt: skip
    start = time.perf_counter()
    train_dpo(cfg)
    return {"pairs_per_s": PAIRS / (time.perf_counter() - start)}


def run_trl(root: Path) -> dict[str, float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    path = model_dir(root)
    args = DPOConfig(
        output_dir=tempfile.mkdtemp(), max_steps=PAIRS // BATCH, per_device_train_batch_size=BATCH,
        learning_rate=LR, lr_scheduler_type="constant", beta=BETA, loss_type="sigmoid", use_cpu=True,
        report_to=[], save_strategy="no", logging_steps=PAIRS, dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(path), args=args, train_dataset=Dataset.from_list(pairs()),
        processing_class=AutoTokenizer.from_pretrained(path),
    )  # fmt: skip
    start = time.perf_counter()
    trainer.train()
    return {"pairs_per_s": PAIRS / (time.perf_counter() - start)}


def main() -> None:
    done = side_by_side(
        {"posttrain": lambda a: run_posttrain(Path(a.root)), "trl": lambda a: run_trl(Path(a.root))}, lambda p: None
    )
    if done is None:
        return
    args, runs = done
    ours, peer = median(runs["posttrain"], "pairs_per_s"), median(runs["trl"], "pairs_per_s")
    print(f"{versions()}; threads {args.threads}; {args.rounds} rounds of {PAIRS} pairs")
    print(f"| engine | pairs/s (median) |\n|---|---|\n| posttrain | {ours:,.1f} |\n| TRL DPOTrainer | {peer:,.1f} |")
    print(f"posttrain / TRL = {ours / peer:.2f}x")


if __name__ == "__main__":
    main()
