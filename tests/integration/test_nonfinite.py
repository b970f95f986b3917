"""Silent NaN, end to end through the CLI.

The issue: "Silent NaN. `optim.lr=1e6`, `optim.lr=inf` (accepted by validation) and
`model.dtype=float16` on a CPU exit 0 with 'final loss nan' and save NaN weights, which later
crash sampling with a torch.multinomial traceback. A non-finite loss or gradient stops the run
with the step and the last good checkpoint named; non-finite config values are refused at load."
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.cli import main
from tests.conftest import FAST


def run_err(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_a_diverging_sft_run_stops_at_the_first_non_finite_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With lr=1e30 the tiny model's first step is finite and its second step's gradient is not
    (before the fix: exit 0, 'final loss nan', NaN weights in final/)."""
    out = tmp_path / "o"
    argv = ["sft", *FAST, "threads=1", "train.max_steps=4", "train.save_every=1", "optim.lr=1e30", f"output_dir={out}"]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    err = lines[-1]  # after the progress bar as it stood (rich keeps it on screen), one line
    assert not any("Traceback" in line for line in lines) and lines[0].startswith("sft "), lines
    assert err.startswith("posttrain: error: optimiser step 2: the gradient norm is nan")
    assert "lower optim.lr" in err and "untouched" in err
    assert not (out / "final").exists()  # nothing non-finite was saved as the run's result
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_000001"]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1]  # the refused step is not logged as if it had happened


@pytest.mark.parametrize("raw", ["inf", "nan"])
def test_a_non_finite_lr_is_refused_before_any_work(raw: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = run_err(capsys, ["sft", f"optim.lr={raw}"])
    assert err == f"posttrain: error: command line: optim.lr: expected a finite number, got {raw}"


def test_float16_on_the_cpu_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    err = run_err(capsys, ["sft", "model.dtype=float16", "model.device=cpu"])
    assert err.startswith("posttrain: error: command line: model.dtype: float16 on the CPU ")


def test_two_train_sections_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  max_steps: 3\ntrain:\n  max_steps: 5\n")
    err = run_err(capsys, ["sft", "--config", str(cfg)])
    assert err == f"posttrain: error: {cfg}:3: train: duplicate key 'train' (first at line 1)"
