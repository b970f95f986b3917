"""Resume through the SFT recipe past a garbage ``latest`` and a truncated newest checkpoint.

Reproduces: "A dangling or garbage ``checkpoints/latest`` makes ``--resume`` restart
from step 0 and discard logged steps although an intact ``step_*`` exists", and a
truncated ``model.safetensors`` being a bare traceback. The run resumes from the older
intact checkpoint and still equals the uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import posttrain.recipes.sft as sft_recipe
from posttrain.train.metrics import read_metrics
from tests.integration.test_recipes import Crash, cfg_for, crash_after


def test_sft_resume_falls_back_past_a_broken_pointer_and_checkpoint(
    tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = ("train.max_steps=8", "train.save_every=2", "optim.schedule=cosine", "optim.warmup_steps=2")
    sft_recipe.train_sft(cfg_for(tmp_path, tiny_dir, "a", *extra))
    cfg = cfg_for(tmp_path, tiny_dir, "b", *extra)
    crash_after(monkeypatch, sft_recipe, 7)  # killed during step 8: checkpoints at 4 and 6
    with pytest.raises(Crash):
        sft_recipe.train_sft(cfg)
    monkeypatch.undo()
    ckpts = tmp_path / "b" / "checkpoints"
    (ckpts / "latest").write_bytes(b"\x00\x00\x00")
    weights = ckpts / "step_000006" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with (tmp_path / "b" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 8, "lo')  # torn by the kill
    capsys.readouterr()
    real, steps = sft_recipe.optimizer_step, []

    def counted(*args: Any, **kwargs: Any) -> Any:
        steps.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sft_recipe, "optimizer_step", counted)
    sft_recipe.train_sft(cfg, resume=True)
    assert len(steps) == 4  # from step 4, not from scratch
    err = " ".join(capsys.readouterr().err.split())
    assert "step_000004" in err and "torn" in err
    a = [r["loss"] for r in read_metrics(tmp_path / "a" / "metrics.jsonl")]
    records = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 9))  # steps 1-4 kept, 5-8 trained again
    assert [r["loss"] for r in records] == pytest.approx(a, rel=1e-5, abs=1e-6)
