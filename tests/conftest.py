"""Shared fixtures: a tiny Llama (2 layers, hidden 32) built once per test session."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from posttrain.config import ArithmeticConfig, TinyModelConfig
from posttrain.models.tiny import build_tiny
from posttrain.tasks.arithmetic import ArithmeticTask

TINY = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=64)

# Small, fast, deterministic settings shared by the integration tests.
FAST = [
    "model.tiny.hidden_size=32",
    "model.tiny.num_layers=2",
    "model.tiny.num_heads=2",
    "model.tiny.intermediate_size=64",
    "data.arithmetic.digits=1",
    "data.arithmetic.num_operands=2",
    "data.num_train=256",
    "train.batch_size=16",
    "train.micro_batch_size=8",
    "sampling.max_new_tokens=16",
    "rollout.prompts_per_step=4",
    "rollout.samples_per_prompt=4",
    "eval.num_problems=8",
    "eval.samples_per_problem=4",
    "eval.sampling.max_new_tokens=16",
    "eval.heldout_demos=16",
]


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(TINY, tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="session")
def prefs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Arithmetic pairs: the worked solution against the same steps ending in a wrong answer."""
    rng, rows = random.Random(0), []
    for ex in ArithmeticTask(ArithmeticConfig(num_operands=2, digits=1)).examples("train", 96, 0):
        assert ex.completion is not None and ex.answer is not None
        wrong = ex.completion.rsplit("#", 1)[0] + f"#{int(ex.answer) + rng.choice([-2, -1, 1, 2])}"
        rows.append({"prompt": ex.prompt, "chosen": ex.completion, "rejected": wrong})
    path = tmp_path_factory.mktemp("prefs") / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
