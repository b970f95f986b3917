"""GRPO throughput on one GPU: a ~0.5B Llama built from a config, the torch engine.

Runs a short SFT (so rewards are not all zero), then GRPO, both with bf16
autocast over fp32 weights, and reports median generation tokens/s, optimiser
step time, iteration time and training MFU against the matmul peak measured on
the same device in the same run. Usage (on a GPU machine, from the repo root):

    python bench/gpu_grpo.py --out /tmp/gpu-bench

MFU counts 6 * params * trained tokens per optimiser step (forward + backward,
attention FLOPs ignored, so it slightly understates the work done).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from posttrain.config import load_config
from posttrain.recipes.grpo import train_grpo
from posttrain.recipes.sft import train_sft
from posttrain.train.metrics import read_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import matmul_peak  # noqa: E402

SIZE = [  # ~0.47B parameters with the 107-symbol character vocabulary
    "model.tiny.hidden_size=1280",
    "model.tiny.num_layers=24",
    "model.tiny.num_heads=20",
    "model.tiny.intermediate_size=3456",
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--sft-steps", type=int, default=300)
    p.add_argument("--grpo-steps", type=int, default=20)
    p.add_argument("--prompts", type=int, default=64)
    args = p.parse_args()
    out = Path(args.out)
    common = [
        *SIZE,
        "model.device=cuda",
        "train.mixed_precision=bf16",
        f"output_dir={out}/sft",
        "stages.sft.train.save_every=0",
        "stages.grpo.train.save_every=0",
        f"stages.sft.train.max_steps={args.sft_steps}",
        "stages.sft.optim.lr=3e-4",
        f"stages.grpo.train.max_steps={args.grpo_steps}",
        f"stages.grpo.grpo.prompts_per_step={args.prompts}",
        "stages.grpo.train.micro_batch_size=128",
        "stages.grpo.optim.lr=1e-5",
        "grpo.drop_uniform_groups=false",  # every iteration trains, so step times are comparable
        "eval.batch_size=1024",
    ]
    peak = matmul_peak("cuda", torch.bfloat16, n=8192)
    sft_dir = train_sft(load_config("recipes/quickstart.yaml", common, stage="sft"))
    grpo_cfg = load_config(
        "recipes/quickstart.yaml", [*common, f"output_dir={out}/grpo", f"model.path={sft_dir}"], stage="grpo"
    )
    train_grpo(grpo_cfg)
    records = [r for r in read_metrics(out / "grpo" / "metrics.jsonl") if r.get("loss") is not None][2:]  # warm-up
    model_params = sum(t.numel() for t in load_file(str(sft_dir / "model.safetensors")).values())
    step = statistics.median(r["step_seconds"] for r in records)
    trained = statistics.median(r["tokens_per_s"] * r["step_seconds"] for r in records)
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "params": model_params,
        "matmul_peak_tflops": peak,
        "samples_per_iteration": args.prompts * grpo_cfg.grpo.samples_per_prompt,
        "gen_tokens_per_s": statistics.median(r["gen_tokens_per_s"] for r in records),
        "gen_seconds": statistics.median(r["gen_seconds"] for r in records),
        "optimizer_step_seconds": step,
        "iteration_seconds": statistics.median(r["gen_seconds"] + r["step_seconds"] for r in records),
        "train_tokens_per_s": statistics.median(r["tokens_per_s"] for r in records),
        "train_mfu": 6 * model_params * trained / step / (peak * 1e12),
        "reward_first_last": [records[0]["reward"], records[-1]["reward"]],
    }
    (out / "gpu_grpo.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
