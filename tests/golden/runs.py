"""The seeded runs whose metrics are kept as golden traces (tests/golden/*.json).

Each run is a few real steps of one recipe on a tiny model, started through the
command line as a user starts it. ``record`` writes their metrics; ``test_golden``
reruns them and asserts every recorded number is reproduced (integers and strings exactly,
floats to float32 noise: ``REL``, ``ABS`` below). A change that
moves a number must say which and why in its commit, and re-record with

    python -m tests.golden.record

Timing figures (``*_per_s``, ``*_seconds``) are not recorded: they are not numerics.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from posttrain.cli import default_config, main
from posttrain.config import ArithmeticConfig
from posttrain.models.tiny import build_tiny
from posttrain.tasks.arithmetic import ArithmeticTask
from posttrain.train.metrics import read_metrics
from tests.conftest import FAST, TINY

HERE = Path(__file__).parent

# GRPO with a spread of rewards on an untrained model: truncation is penalised, so
# groups differ and every iteration updates; KL to the reference, 2 minibatches x 2 passes
GRPO = [
    "train.max_steps=4", "optim.lr=3e-3", "grpo.overlong=penalty", "grpo.overlong_reward=-1.0",
    "grpo.kl_coef=0.05", "grpo.minibatches=2", "grpo.updates_per_batch=2",
]  # fmt: skip
ONLINE_DPO = [
    "train.max_steps=4", "optim.lr=3e-3", "dpo.mode=online", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=4",
    "rollout.sync_every=2", "dpo.pairs=best_worst",
]  # fmt: skip


def _prefs(path: Path) -> Path:
    """Arithmetic pairs: the worked solution against the same steps ending in a wrong answer."""
    import random

    rng, rows = random.Random(0), []
    for ex in ArithmeticTask(ArithmeticConfig(num_operands=2, digits=1)).examples("train", 96, 0):
        assert ex.completion is not None and ex.answer is not None
        wrong = ex.completion.rsplit("#", 1)[0] + f"#{int(ex.answer) + rng.choice([-2, -1, 1, 2])}"
        rows.append({"prompt": ex.prompt, "chosen": ex.completion, "rejected": wrong})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cli(*args: str) -> None:
    torch.set_num_threads(1)
    code = main(list(args))
    assert code == 0, f"posttrain {' '.join(args)} exited {code}"


def _metrics(out: Path) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in r.items() if not (k.endswith("_per_s") or k.endswith("seconds"))}
        for r in read_metrics(out / "metrics.jsonl")
    ]


def run_sft(tmp: Path) -> list[dict[str, Any]]:
    tiny = build_tiny(TINY, tmp / "tiny", seed=0)
    _cli("sft", *FAST, f"model.path={tiny}", f"output_dir={tmp / 'out'}", "train.max_steps=6", "optim.lr=3e-3")
    return _metrics(tmp / "out")


def run_grpo(tmp: Path) -> list[dict[str, Any]]:
    tiny = build_tiny(TINY, tmp / "tiny", seed=0)
    _cli("grpo", *FAST, f"model.path={tiny}", f"output_dir={tmp / 'out'}", *GRPO)
    return _metrics(tmp / "out")


def run_dpo_offline(tmp: Path) -> list[dict[str, Any]]:
    tiny = build_tiny(TINY, tmp / "tiny", seed=0)
    prefs = _prefs(tmp / "prefs.jsonl")
    _cli("dpo", *FAST, f"model.path={tiny}", f"output_dir={tmp / 'out'}", f"data.path={prefs}",
         "train.max_steps=5", "optim.lr=3e-3")  # fmt: skip
    return _metrics(tmp / "out")


def run_dpo_online(tmp: Path) -> list[dict[str, Any]]:
    tiny = build_tiny(TINY, tmp / "tiny", seed=0)
    prefs = _prefs(tmp / "prefs.jsonl")
    # a reward model that ranks every prompt's samples, so each step has pairs
    _cli("rm", *FAST, f"model.path={tiny}", f"output_dir={tmp / 'rm'}", f"data.path={prefs}",
         "train.max_steps=2", "optim.lr=2e-3")  # fmt: skip
    rm = tmp / "rm" / "final"
    _cli("dpo", *FAST, f"model.path={tiny}", f"output_dir={tmp / 'out'}", *ONLINE_DPO,
         f"reward.components=[{{kind: reward_model, path: {rm}}}]")  # fmt: skip
    return _metrics(tmp / "out")


def run_quickstart_grpo(tmp: Path) -> list[dict[str, Any]]:
    """The quickstart's own settings: a short SFT, then its first GRPO iterations."""
    qs = str(default_config())
    _cli("sft", "--config", qs, f"output_dir={tmp / 'sft'}", "train.max_steps=40", "train.save_every=0")
    _cli("grpo", "--config", qs, f"model.path={tmp / 'sft' / 'final'}", f"output_dir={tmp / 'out'}",
         "train.max_steps=3", "train.save_every=0")  # fmt: skip
    return _metrics(tmp / "out")


RUNS: dict[str, Callable[[Path], list[dict[str, Any]]]] = {
    "sft": run_sft,
    "grpo": run_grpo,
    "dpo_offline": run_dpo_offline,
    "dpo_online": run_dpo_online,
    "quickstart_grpo": run_quickstart_grpo,
}


def mismatches(golden: list[dict[str, Any]], got: list[dict[str, Any]]) -> list[str]:
    """Every recorded number that the new run does not reproduce exactly (new keys are allowed)."""
    if len(golden) != len(got):
        return [f"{len(got)} records, golden has {len(golden)}"]
    out = []
    for i, (a, b) in enumerate(zip(golden, got)):
        for key, value in a.items():
            if key not in b:
                out.append(f"record {i}: {key} missing")
            elif not _same(value, b[key]):
                out.append(f"record {i}: {key} = {b[key]!r}, golden {value!r}")
    return out


# Floats are compared to float32 noise, not bit for bit: the same seeded run on another CPU
# (AVX-512 against AVX2 kernels, another summation order inside a matmul) differs in the last
# bits, e.g. grad_norm 1.7345524 against 1.7345525, DPO margins ~1e-5 relative (measured on two
# x86 machines). A change to the computation moves these numbers by far more than this; a
# sample that flips changes a count or a length, which is compared exactly.
REL, ABS = 1e-4, 1e-6


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=REL, abs_tol=ABS)
    return bool(a == b)
