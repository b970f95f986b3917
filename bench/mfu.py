"""Training MFU on this machine: SFT's model FLOP/s over the matmul peak measured here.

    .venv/bin/python bench/mfu.py                  # the quickstart model and a 27M Llama, fp32 and bf16

Model FLOPs per trained token follow PaLM (Chowdhery et al. 2022, appendix B):
6 N + 12 L d T, where N counts the weights of every matmul (the linear layers and
the output head; the embedding lookup is not a matmul), L layers, d hidden size,
T the mean sequence length. Only real tokens count: padding is work the model
did not need, so packing raises MFU honestly and padding lowers it. The peak is
the median of a 2048³ matmul at the same dtype and thread count (fp32 for fp32
runs; bf16 for bf16 autocast, whose matmuls run in bf16), so MFU says how much of
what this CPU can do the training step used.

Each run: posttrain SFT on the quickstart's demonstrations (batch ``--batch``,
one micro-batch, ``train.packing`` on unless ``--no-packing``), median step time
after the first two steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import demonstrations, matmul_peak, versions  # noqa: E402

MODELS = {  # name -> (tiny-model overrides, steps)
    "quickstart": ([], 12),
    "larger": (["model.tiny.hidden_size=512", "model.tiny.num_layers=8", "model.tiny.num_heads=8",
                "model.tiny.intermediate_size=1536"], 5),
}  # fmt: skip


def model_flops_per_token(model: torch.nn.Module, seq_len: float) -> float:
    cfg = model.config  # type: ignore[attr-defined]
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def run(name: str, precision: str, batch: int, packing: bool, root: Path) -> dict[str, float]:
    from posttrain.config import load_config
    from posttrain.models.io import load_model
    from posttrain.recipes.sft import train_sft
    from posttrain.train.metrics import read_metrics

    overrides, steps = MODELS[name]
    data = root / "demos.jsonl"
    if not data.is_file():
        data.write_text("".join(json.dumps(r) + "\n" for r in demonstrations(4096)))
    out = root / f"{name}-{precision}"
    cfg = load_config(None, [*overrides, "data.task=jsonl", f"data.path={data}", f"train.max_steps={steps}",
                             f"train.batch_size={batch}", f"train.micro_batch_size={batch}", "optim.lr=1e-3",
                             f"train.mixed_precision={'bf16' if precision == 'bf16' else 'no'}",
                             f"train.packing={packing}", f"output_dir={out}"])  # fmt: skip
    train_sft(cfg)
    records = read_metrics(out / "metrics.jsonl")[2:]
    seconds = statistics.median(r["tokens"] / r["tokens_per_s"] for r in records)
    tokens = statistics.median(r["tokens"] for r in records)
    model = load_model(out / "final", "float32", "cpu")
    flops = model_flops_per_token(model, tokens / batch) * tokens / seconds
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "tokens_per_s": tokens / seconds,
            "tflops": flops / 1e12}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--no-packing", action="store_true")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    peaks = {"fp32": matmul_peak("cpu", torch.float32), "bf16": matmul_peak("cpu", torch.bfloat16)}
    root = Path(tempfile.mkdtemp())
    print(f"{versions()}; threads {args.threads}; SFT batch {args.batch}; packing {not args.no_packing}")
    print(f"matmul peak (2048^3, median of 10): fp32 {peaks['fp32'] * 1e3:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16'] * 1e3:.0f} GFLOP/s\n")  # fmt: skip
    print("| model | params (M) | precision | tokens/s | model GFLOP/s | MFU |\n|---|---:|---|---:|---:|---:|")
    for name in args.models:
        for precision in ("fp32", "bf16"):
            r = run(name, precision, args.batch, not args.no_packing, root)
            print(f"| {name} | {r['params_m']:.1f} | {precision} | {r['tokens_per_s']:,.0f} | "
                  f"{r['tflops'] * 1e3:.1f} | {r['tflops'] / peaks[precision]:.1%} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
