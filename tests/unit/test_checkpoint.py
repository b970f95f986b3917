"""Checkpoints: atomic writes and the ``latest`` pointer under a simulated crash."""

from __future__ import annotations

from pathlib import Path

import torch

from posttrain.config import OptimConfig
from posttrain.models.io import load_model, load_tokenizer
from posttrain.train.checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint
from posttrain.train.loop import build_optimizer


def test_crash_mid_save_leaves_previous_checkpoint(tmp_path: Path, tiny_dir: Path) -> None:
    model, tok = load_model(tiny_dir), load_tokenizer(tiny_dir)
    opt, sch = build_optimizer(model, OptimConfig(), 10)
    root = tmp_path / "checkpoints"
    first = save_checkpoint(root, 5, model, tok, opt, sch, extra={"epoch": 1})
    # a kill during the next save leaves a half-written temporary directory behind
    partial = root / ".tmp_step_000010"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"truncated")
    assert latest_checkpoint(root) == first
    state = load_trainer_state(first, opt, sch)
    assert state["step"] == 5 and state["extra"] == {"epoch": 1}
    load_model(first)  # still a loadable model directory
    # the next completed save replaces the leftover and moves the pointer
    second = save_checkpoint(root, 10, model, tok, opt, sch)
    assert latest_checkpoint(root) == second and not partial.exists()


def test_keeps_only_the_newest(tmp_path: Path, tiny_dir: Path) -> None:
    model, tok = load_model(tiny_dir), load_tokenizer(tiny_dir)
    opt, sch = build_optimizer(model, OptimConfig(), 10)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, tok, opt, sch, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_000002", "step_000003"]


def test_rng_state_restored(tmp_path: Path, tiny_dir: Path) -> None:
    model, tok = load_model(tiny_dir), load_tokenizer(tiny_dir)
    opt, sch = build_optimizer(model, OptimConfig(), 10)
    torch.manual_seed(7)
    path = save_checkpoint(tmp_path, 1, model, tok, opt, sch)
    expected = torch.rand(3)
    torch.manual_seed(99)
    load_trainer_state(path, opt, sch)
    assert torch.equal(torch.rand(3), expected)


def test_train_keep_checkpoints_sets_how_many_step_directories_stay(tmp_path: Path) -> None:
    from posttrain.cli import main
    from tests.conftest import FAST

    args = ["sft", *FAST, "train.max_steps=4", "train.save_every=1", "train.batch_size=4", "train.micro_batch_size=4"]
    assert main([*args, f"output_dir={tmp_path / 'three'}", "train.keep_checkpoints=3"]) == 0
    assert sorted(p.name for p in (tmp_path / "three" / "checkpoints").glob("step_*")) == [
        "step_000002",
        "step_000003",
        "step_000004",
    ]
    assert main([*args, f"output_dir={tmp_path / 'default'}"]) == 0
    assert sorted(p.name for p in (tmp_path / "default" / "checkpoints").glob("step_*")) == [
        "step_000003",
        "step_000004",
    ]
    assert main([*args, f"output_dir={tmp_path / 'none'}", "train.keep_checkpoints=0"]) == 2
