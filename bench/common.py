"""Shared set-up of the side-by-side benchmarks: one model, one data set, one thread count.

The peer (TRL) is installed in the benchmark environment only:

    python -m venv .bench-venv && .bench-venv/bin/pip install torch==2.13.0
    .bench-venv/bin/pip install -e . trl
"""

from __future__ import annotations

import argparse
import json
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


def model_dir(root: Path) -> Path:
    path = root / "model"
    if not (path / "config.json").is_file():
        build_tiny(MODEL, path, seed=0)
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
    runners: dict[str, Runner], add_args: Callable[[argparse.ArgumentParser], None]
) -> tuple[argparse.Namespace, dict[str, list[dict[str, float]]]] | None:
    """The shared command line of the side-by-side benchmarks.

    With ``--engine NAME`` this process is one measured run: it prints the runner's
    JSON and returns None. Without it, it re-runs this script once per engine per
    round, alternating, and returns the parsed arguments and every run's figures.
    """
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--engine", choices=list(runners))
    p.add_argument("--root", default=tempfile.mkdtemp())
    add_args(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.engine:
        print(json.dumps(runners[args.engine](args)))
        return None
    base = [sys.executable, sys.argv[0], *sys.argv[1:], "--root", args.root]
    return args, alternate({e: [*base, "--engine", e] for e in runners}, args.rounds)


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
