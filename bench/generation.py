"""Generation throughput: posttrain's sampler against ``transformers`` ``generate``.

Same model (the quickstart's tiny Llama built from its config, ``--model DIR``, or
``--model smollm2`` / ``smollm2-config``: bench/common.py's ``MODEL_HELP``), same
prompts (arithmetic, or GSM8K questions as chat turns with ``--gsm8k``), same
sampling (T = 1, no top-k/top-p), same ``max_new_tokens``; runs alternate between
engines and the medians of ``--repeats`` runs are reported as generated tokens
per second (each engine counts the tokens it actually produced, up to and
including the stop token).

Each rate is also a fraction of a bound measured in the same run: at batch 1
decode reads every weight once a token (weight bytes / measured copy
bandwidth), at a large batch the matmuls limit (measured matmul peak / 2 FLOPs
per parameter); batch b's bound is the smaller of b times the first and the
second (``common.decode_bounds``). ``--engine-dtype bfloat16`` adds posttrain's
sampler decoding from a bf16 copy (``engine.dtype``) and ``generate`` on a bf16 copy of
the model, against bf16 bounds; each row's "vs generate" is against ``generate`` in the
row's own dtype. ``--packed`` adds the same samplers with ``engine.packed_linears`` (oneDNN on
packed weights, CPU only) beside the plain ones.

    python bench/generation.py                   # CPU, batches 1, 16, 64
    python bench/generation.py --model smollm2 --engine-dtype bfloat16 --threads 2
    python bench/generation.py --device cuda --batches 1 16 64 256
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from posttrain.config import TinyModelConfig
from posttrain.models.io import load_model, load_tokenizer
from posttrain.models.tiny import build_tiny
from posttrain.rollout.base import SamplingParams
from posttrain.rollout.torch_engine import TorchEngine
from posttrain.tasks.arithmetic import ArithmeticTask

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    MODEL_HELP,
    TASK,  # the quickstart's task
    chat_prompt,
    copy_bandwidth,
    decode_bound,
    decode_bounds,
    gsm8k_examples,
    matmul_peak,
    peak_mib,
    resolve_model,
)

GENERATE = "transformers generate"


def hf_generate(model, tok, prompts: list[list[int]], max_new: int, seed: int) -> int:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    torch.manual_seed(seed)
    out = model.generate(
        input_ids=ids.to(model.device), attention_mask=mask.to(model.device), do_sample=True, temperature=1.0,
        top_k=0, top_p=1.0, max_new_tokens=max_new, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    new = out[:, width:]
    produced = 0
    for row in new.tolist():
        produced += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
    return produced


def engine_tokens(engine: TorchEngine, prompts: list[list[int]], sp: SamplingParams) -> int:
    return sum(len(c.completion_ids) for c in engine.generate(prompts, sp))


def timed(fn: Callable[[], int], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    tokens = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return tokens / (time.perf_counter() - t)


def prompt_ids(tok, n: int, gsm8k: str | None) -> list[list[int]]:
    if gsm8k:  # rendered as posttrain puts a question to a chat model, tokenised as it encodes it
        return [tok(chat_prompt(tok, q), add_special_tokens=False)["input_ids"] for q, _, _ in gsm8k_examples(gsm8k, n)]
    return [tok(ex.prompt)["input_ids"] for ex in ArithmeticTask(TASK).examples("test", n, 0)]


def bounds_for(model, dtype: torch.dtype, device: str, bandwidth: float) -> tuple[float, float]:
    """``decode_bounds`` of ``model``'s parameters held in ``dtype``, with ``dtype``'s measured matmul peak."""
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = params * torch.finfo(dtype).bits // 8
    return decode_bounds(weight_bytes, params, bandwidth, matmul_peak(device, dtype))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", help=f"default: the quickstart's tiny model, random init; or {MODEL_HELP}")
    p.add_argument("--root", default=tempfile.mkdtemp(), help="where --model smollm2 is converted")
    p.add_argument("--gsm8k", help="GSM8K train.jsonl: its questions (chat turns) as prompts instead of arithmetic")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument(
        "--engine-dtype", choices=["bfloat16"], help="also run posttrain's sampler from a copy in this dtype"
    )
    p.add_argument("--no-generic", action="store_true", help="skip posttrain's generic (HF cache) path")
    p.add_argument("--packed", action="store_true", help="also run each sampler with engine.packed_linears (oneDNN)")
    p.add_argument("--json", help="also write every row and the bounds to this file")
    p.add_argument("--size", type=int, nargs=4, metavar=("HIDDEN", "LAYERS", "HEADS", "MLP"),
                   help="build a random-init Llama of this shape instead of the quickstart's")  # fmt: skip
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = TinyModelConfig(*args.size) if args.size else TinyModelConfig()
    if args.model:
        path = resolve_model(args.model, Path(args.root))
    else:
        path = build_tiny(shape, Path(tempfile.mkdtemp()) / "tiny", seed=0)
    model, tok = load_model(path, device=args.device).eval(), load_tokenizer(path)
    device = model.device
    prompts_all = prompt_ids(tok, max(args.batches), args.gsm8k)
    batch_size = max(args.batches)
    engines = {"posttrain": TorchEngine(model, tok, batch_size=batch_size)}
    if not args.no_generic:
        engines["posttrain (generic path)"] = TorchEngine(model, tok, batch_size=batch_size, fast=False)
    generators = {torch.float32: (GENERATE, model)}  # generate in each dtype the engines sample in
    dtypes = {name: torch.float32 for name in [*engines, GENERATE]}
    if args.engine_dtype:
        low = getattr(torch, args.engine_dtype)
        name = f"posttrain ({args.engine_dtype})"
        engines[name] = TorchEngine(model, tok, batch_size=batch_size, dtype=args.engine_dtype)
        generators[low] = (f"{GENERATE} ({args.engine_dtype})", copy.deepcopy(model).to(low))
        dtypes[name] = dtypes[generators[low][0]] = low
        if args.packed:
            engines[f"{name} packed"] = TorchEngine(
                model, tok, batch_size=batch_size, dtype=args.engine_dtype, packed_linears=True
            )
            dtypes[f"{name} packed"] = low
    if args.packed:
        engines["posttrain packed"] = TorchEngine(model, tok, batch_size=batch_size, packed_linears=True)
        dtypes["posttrain packed"] = torch.float32
    bandwidth = copy_bandwidth() if device.type == "cpu" else float("nan")
    bounds = {dt: bounds_for(model, dt, device.type, bandwidth) for dt in set(dtypes.values())}
    print(f"device {device}, threads {torch.get_num_threads()}, torch {torch.__version__}")
    for dt, (bw, mm) in bounds.items():
        print(f"{str(dt).removeprefix('torch.')}: bandwidth bound at batch 1 {bw:,.1f} tokens/s ({bandwidth / 1e9:.1f} GB/s copy), "
              f"matmul bound {mm:,.0f} tokens/s")  # fmt: skip
    print("| batch | engine | tokens/s | vs generate | of bound |\n|---|---|---|---|---|")
    rows = []
    for batch in args.batches:
        prompts = prompts_all[:batch]
        runs: dict[str, list[float]] = {name: [] for name in [*engines, *(n for n, _ in generators.values())]}
        for r in range(args.repeats + 1):  # the first round warms up and is dropped
            for name, eng in engines.items():
                sp = SamplingParams(max_new_tokens=args.max_new_tokens, seed=r)
                runs[name].append(timed(partial(engine_tokens, eng, prompts, sp), device))
            for name, hf_model in generators.values():
                runs[name].append(timed(partial(hf_generate, hf_model, tok, prompts, args.max_new_tokens, r), device))
        for name, rates in runs.items():
            med = statistics.median(rates[1:])
            base = statistics.median(runs[generators[dtypes[name]][0]][1:])
            of_bound = med / decode_bound(batch, bounds[dtypes[name]])
            rows.append({"batch": batch, "engine": name, "tokens_per_s": med, "vs_generate": med / base,
                         "of_bound": of_bound, "dtype": str(dtypes[name]).removeprefix("torch.")})  # fmt: skip
            print(f"| {batch} | {name} | {med:,.0f} | {med / base:.2f}x | {of_bound:.2f} |")
    print(f"peak resident memory of this process (all engines): {peak_mib():,.0f} MiB")
    if args.json:
        named = {str(dt).removeprefix("torch."): {"batch1_bandwidth": b[0], "matmul": b[1]} for dt, b in bounds.items()}
        summary = {"rows": rows, "bounds": named, "copy_bytes_per_s": bandwidth, "peak_mib": peak_mib()}
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
