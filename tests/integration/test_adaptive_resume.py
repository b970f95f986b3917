"""`posttrain adaptive --resume`: the head's training checkpoints and resumes to the uninterrupted run's head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import posttrain.recipes.adaptive as adaptive
from posttrain.config import Config, load_config
from posttrain.models.temperature_head import load_head
from posttrain.train.metrics import read_metrics
from tests.conftest import FAST


class Crash(Exception):
    pass


def cfg_for(tmp_path: Path, tiny_dir: Path, name: str, *extra: str) -> Config:
    return load_config(
        None,
        [*FAST, f"model.path={tiny_dir}", f"output_dir={tmp_path / name}", "data.task=mixed_decoding",
         "data.num_train=64", "sampling.max_new_tokens=8", "rollout.samples_per_prompt=3", "optim.lr=0.05",
         "optim.schedule=cosine", "optim.warmup_steps=1", "adaptive.level=token", "adaptive.width=8",
         "adaptive.eval_prompts=0", "train.max_steps=4", "train.save_every=2", *extra],
    )  # fmt: skip


def crash_on_call(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """The recipe's ``n``-th LPO step raises, as a kill during that iteration would end it."""
    real, count = adaptive.lpo_step, {"n": 0}

    def step(*args: Any, **kwargs: Any) -> Any:
        count["n"] += 1
        if count["n"] == n:
            raise Crash
        return real(*args, **kwargs)

    monkeypatch.setattr(adaptive, "lpo_step", step)


def head_state(final: Path) -> dict[str, torch.Tensor]:
    head = load_head(final)
    assert head is not None
    return head.state_dict()


def test_resumed_head_equals_the_uninterrupted_one(
    tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4 iterations, a checkpoint every 2; killed during iteration 4 (the last checkpoint is step 2),
    then resumed: iterations 3 and 4 run again from the checkpoint's head, optimiser and schedule."""
    straight = head_state(adaptive.train_adaptive(cfg_for(tmp_path, tiny_dir, "a")))
    cfg = cfg_for(tmp_path, tiny_dir, "b")
    crash_on_call(monkeypatch, 4)
    with pytest.raises(Crash):
        adaptive.train_adaptive(cfg)
    monkeypatch.undo()
    ckpt = tmp_path / "b" / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step_000002"
    assert sorted(p.name for p in (ckpt / "step_000002").iterdir()) == [
        "temperature_head.json", "temperature_head.safetensors", "trainer_state.pt"]  # fmt: skip  # no LM copy
    resumed = head_state(adaptive.train_adaptive(cfg, resume=True))
    a = read_metrics(tmp_path / "a" / "metrics.jsonl")
    b = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4]  # iteration 3's record from the killed run is cut
    assert [(r["pairs"], r["loss"]) for r in b] == [(r["pairs"], r["loss"]) for r in a]  # None: no pair, no step
    assert any(r["pairs"] for r in b[:2]) and any(r["pairs"] for r in b[2:])  # updates before and after the cut
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    fresh = adaptive.new_head([0.0, 0.4, 0.8, 1.2], "token", 32, 8).state_dict()
    assert any(not torch.equal(fresh[k], straight[k]) for k in fresh)  # the head did train


def test_resume_without_a_checkpoint_starts_over(tmp_path: Path, tiny_dir: Path) -> None:
    cfg = cfg_for(tmp_path, tiny_dir, "c", "train.max_steps=1", "train.save_every=0")
    final = adaptive.train_adaptive(cfg, resume=True)
    assert [r["step"] for r in read_metrics(tmp_path / "c" / "metrics.jsonl")] == [1]
    assert load_head(final) is not None and not (tmp_path / "c" / "checkpoints").exists()
