"""GRPO throughput on one GPU: a ~0.5B Llama built from a config, torch and vLLM engines.

Runs a short SFT (so rewards are not all zero), then GRPO from it with each engine
asked for, both with bf16 autocast over fp32 weights, and reports median
generation tokens/s, optimiser step time, iteration time, training MFU against
the matmul peak measured on the same device in the same run, and the train/sample
logprob gap. Usage (on a GPU machine, from the repo root):

    python bench/gpu_grpo.py --out /tmp/gpu-bench [--engines torch vllm]

MFU counts 6 * params * trained tokens per optimiser step (forward + backward,
attention FLOPs ignored, so it slightly understates the work done).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

import posttrain.recipes.grpo as grpo_recipe
from posttrain import experiments
from posttrain.config import load_config
from posttrain.recipes.grpo import train_grpo
from posttrain.recipes.sft import train_sft
from posttrain.rollout.factory import sync_engine
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
    p.add_argument("--engines", nargs="+", choices=["torch", "vllm"], default=["torch"])
    p.add_argument("--gpu-memory-utilization", type=float, default=0.3)
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
        f"stages.grpo.rollout.prompts_per_step={args.prompts}",
        "stages.grpo.train.micro_batch_size=128",
        "stages.grpo.optim.lr=1e-5",
        "grpo.drop_uniform_groups=false",  # every iteration trains, so step times are comparable
        "engine.batch_size=1024",
    ]
    peak = matmul_peak("cuda", torch.bfloat16, n=8192)
    sft_dir = train_sft(load_config(experiments.path("quickstart"), common, stage="sft"))
    model_params = sum(t.numel() for t in load_file(str(sft_dir / "model.safetensors")).values())
    results = {}
    for engine in args.engines:
        grpo_cfg = load_config(
            experiments.path("quickstart"),
            [*common, f"output_dir={out}/grpo-{engine}", f"model.path={sft_dir}", f"engine.backend={engine}",
             f"engine.gpu_memory_utilization={args.gpu_memory_utilization}"],
            stage="grpo",
        )  # fmt: skip
        syncs.clear()
        t0 = time.perf_counter()
        train_grpo(grpo_cfg)
        wall = time.perf_counter() - t0
        records = [r for r in read_metrics(out / f"grpo-{engine}" / "metrics.jsonl") if r.get("loss") is not None]
        results[engine] = summarise(records[2:], model_params, peak, args.prompts * grpo_cfg.rollout.samples_per_prompt)
        results[engine]["sync_seconds"] = statistics.median(syncs) if syncs else 0.0
        # engine start-up (vLLM: load, compile, CUDA graphs) and the syncs: all the run's time outside iterations
        results[engine]["outside_iterations_seconds"] = wall - sum(
            r["gen_seconds"] + r["step_seconds"] for r in records
        )
        print(json.dumps({engine: results[engine]}, indent=2), flush=True)
    (out / "gpu_grpo.json").write_text(json.dumps(results, indent=2))


syncs: list[float] = []


def timed_sync(engine: object, model: torch.nn.Module) -> None:
    t = time.perf_counter()
    sync_engine(engine, model)  # type: ignore[arg-type]
    torch.cuda.synchronize()
    syncs.append(time.perf_counter() - t)


grpo_recipe.sync_engine = timed_sync  # type: ignore[assignment]


def summarise(records: list[dict], model_params: int, peak: float, samples: int) -> dict:
    """Medians over ``records`` (the warm-up iterations already left out)."""
    step = statistics.median(r["step_seconds"] for r in records)
    trained = statistics.median(r["tokens_per_s"] * r["step_seconds"] for r in records)
    return {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "params": model_params,
        "matmul_peak_tflops": peak,
        "samples_per_iteration": samples,
        "gen_tokens_per_s": statistics.median(r["gen_tokens_per_s"] for r in records),
        "gen_seconds": statistics.median(r["gen_seconds"] for r in records),
        "optimizer_step_seconds": step,
        "iteration_seconds": statistics.median(r["gen_seconds"] + r["step_seconds"] for r in records),
        "train_tokens_per_s": statistics.median(r["tokens_per_s"] for r in records),
        "train_mfu": 6 * model_params * trained / step / (peak * 1e12),
        "logprob_gap": statistics.median(r["logprob_gap"] for r in records),
        "reward_first_last": [records[0]["reward"], records[-1]["reward"]],
    }


if __name__ == "__main__":
    main()
