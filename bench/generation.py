"""Generation throughput: posttrain's sampler against ``transformers`` ``generate``.

Same model (the quickstart's tiny Llama built from its config, or ``--model DIR``),
same prompts, same sampling (T = 1, no top-k/top-p), same ``max_new_tokens``;
runs alternate between engines and the medians of ``--repeats`` runs are
reported as generated tokens per second (each engine counts the tokens it
actually produced, up to and including the stop token).

    python bench/generation.py                   # CPU, batches 1, 16, 64
    python bench/generation.py --device cuda --batches 1 16 64 256
"""

from __future__ import annotations

import argparse
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
from common import TASK  # noqa: E402  the quickstart's task


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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", help="a causal LM directory (default: the quickstart's tiny model, random init)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--size", type=int, nargs=4, metavar=("HIDDEN", "LAYERS", "HEADS", "MLP"),
                   help="build a random-init Llama of this shape instead of the quickstart's")  # fmt: skip
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = TinyModelConfig(*args.size) if args.size else TinyModelConfig()
    path = args.model or build_tiny(shape, Path(tempfile.mkdtemp()) / "tiny", seed=0)
    model, tok = load_model(path, device=args.device).eval(), load_tokenizer(path)
    device = model.device
    prompts_all = [tok(ex.prompt)["input_ids"] for ex in ArithmeticTask(TASK).examples("test", max(args.batches), 0)]
    engines = {
        "posttrain": TorchEngine(model, tok, batch_size=max(args.batches)),
        "posttrain (generic path)": TorchEngine(model, tok, batch_size=max(args.batches), fast=False),
    }
    print(f"device {device}, threads {torch.get_num_threads()}, torch {torch.__version__}")
    print("| batch | engine | tokens/s | vs generate |\n|---|---|---|---|")
    for batch in args.batches:
        prompts = prompts_all[:batch]
        runs: dict[str, list[float]] = {name: [] for name in [*engines, "transformers generate"]}
        for r in range(args.repeats + 1):  # the first round warms up and is dropped
            for name, eng in engines.items():
                sp = SamplingParams(max_new_tokens=args.max_new_tokens, seed=r)
                runs[name].append(timed(partial(engine_tokens, eng, prompts, sp), device))
            hf = partial(hf_generate, model, tok, prompts, args.max_new_tokens, r)
            runs["transformers generate"].append(timed(hf, device))
        base = statistics.median(runs["transformers generate"][1:])
        for name, rates in runs.items():
            med = statistics.median(rates[1:])
            print(f"| {batch} | {name} | {med:,.0f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
