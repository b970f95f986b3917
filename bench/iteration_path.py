"""How much code one GRPO iteration runs: the posttrain functions it calls, per file, with their lines.

    python bench/iteration_path.py [--all]

Runs two iterations of GRPO on a small model built from a config (no downloads) and
records, with ``sys.settrace``, every function of the ``posttrain`` package that the
second iteration calls. By default the engine's sampler, the reward's scorer and the
shared optimiser step are left out: they sit behind a protocol or are shared by every
recipe, so reading an iteration does not mean reading them (``--all`` counts them too).
The count is of the called functions' own lines (``def`` to last line, each line once), not whole files.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from types import FrameType
from typing import Any

import posttrain
from posttrain.cli import main
from posttrain.models.tiny import build_tiny
from posttrain.recipes import online
from posttrain.recipes.grpo import GRPOStep

ROOT = Path(posttrain.__file__).parent
BEHIND_AN_INTERFACE = ("rollout/torch_engine.py", "rollout/decoders.py", "rewards/", "train/loop.py", "tasks/",
                       "data/tokenize.py", "device.py", "train/distributed.py", "train/metrics.py")  # fmt: skip


def main_() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--all", action="store_true", help="count the engine, reward and optimiser-step internals too")
    args = p.parse_args()
    seen: dict[str, dict[str, tuple[int, int]]] = defaultdict(dict)
    tracing = {"on": False}

    def tracer(frame: FrameType, event: str, arg: Any) -> None:
        if event != "call" or not tracing["on"]:
            return None
        path = Path(frame.f_code.co_filename)
        if ROOT not in path.parents:
            return None
        rel = path.relative_to(ROOT).as_posix()
        if not args.all and rel.startswith(BEHIND_AN_INTERFACE):
            return None
        code = frame.f_code
        if code.co_name.startswith("<"):  # comprehensions and lambdas: lines of their enclosing function
            return None
        try:
            lines, start = inspect.getsourcelines(code)
        except OSError:
            return None
        seen[rel][code.co_qualname] = (start, len(lines))
        return None

    real_draw, real_step = online.draw_and_sample, GRPOStep.__call__
    calls = {"n": 0}

    def draw(*a: Any, **k: Any) -> Any:  # trace the second iteration: its sampling ...
        calls["n"] += 1
        tracing["on"] = calls["n"] == 2
        return real_draw(*a, **k)

    def step(*a: Any, **k: Any) -> Any:  # ... and its update, and nothing after it
        try:
            return real_step(*a, **k)
        finally:
            tracing["on"] = False

    online.draw_and_sample = draw  # type: ignore[assignment]
    GRPOStep.__call__ = step  # type: ignore[method-assign]
    # the loop's own body runs around those calls: it is read too
    lines, start = inspect.getsourcelines(online.train_online)
    seen["recipes/online.py"]["train_online"] = (start, len(lines))
    with tempfile.TemporaryDirectory() as tmp:
        from posttrain.config import TinyModelConfig

        tiny = build_tiny(
            TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), Path(tmp) / "m", 0
        )
        sys.setprofile(tracer)
        try:
            main(["grpo", f"model.path={tiny}", f"output_dir={tmp}/out", "train.max_steps=2", "rollout.prompts_per_step=4",
                  "rollout.samples_per_prompt=4", "sampling.max_new_tokens=16", "grpo.overlong=penalty",
                  "grpo.overlong_reward=-1", "grpo.drop_uniform_groups=false"])  # fmt: skip
        finally:
            sys.setprofile(None)
    total = 0
    for rel in sorted(seen):
        # a line counts once, also when a nested function's lines lie inside its caller's
        n = len({line for start, length in seen[rel].values() for line in range(start, start + length)})
        total += n
        print(f"{rel:36s} {n:5d} lines in {len(seen[rel])} functions")
    print(f"{len(seen)} files, {total} lines")


if __name__ == "__main__":
    main_()
