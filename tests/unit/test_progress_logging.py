"""Progress as plain lines off a terminal, with rate, ETA and learning rate; TensorBoard and W&B beside metrics.jsonl."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pytest
from rich.console import Console

from posttrain.cli import main
from posttrain.config import LoggingConfig
from posttrain.errors import ConfigError
from posttrain.train import metrics
from posttrain.train.metrics import PlainProgress, progress, read_metrics, scalars, use_logging
from tests.conftest import FAST


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _default_logging() -> None:
    yield
    use_logging(LoggingConfig())  # a test's logging section does not leak into the next


def test_plain_lines_every_interval_with_rate_eta_and_a_last_line() -> None:
    out, clock = io.StringIO(), Clock()
    console = Console(file=out, width=200)
    with PlainProgress(console, every_s=10.0, clock=clock) as bar:
        task = bar.add_task("sft", total=100, completed=20, info="")  # resumed at step 20
        for _ in range(30):  # 2 s a step: a line at 10 s (step 25), 20 s (30), ... 60 s (50)
            clock.now += 2.0
            bar.update(task, advance=1, info="loss 0.5000, lr 1.00e-03")
    lines = out.getvalue().splitlines()
    assert len(lines) == 6  # every 10 s over 60 s; the last one already printed at step 50, so no extra end line
    # 5 steps in 10 s of this run: 2.0 s/it; 75 steps left at 0.5 it/s: 150 s
    assert lines[0] == "sft 25/100 (25%), 2.0 s/it, elapsed 0:00:10, ETA 0:02:30, loss 0.5000, lr 1.00e-03"
    assert lines[-1] == "sft 50/100 (50%), 2.0 s/it, elapsed 0:01:00, ETA 0:01:40, loss 0.5000, lr 1.00e-03"


def test_the_end_of_a_phase_prints_its_last_state() -> None:
    out, clock = io.StringIO(), Clock()
    with PlainProgress(Console(file=out, width=200), every_s=30.0, clock=clock) as bar:
        task = bar.add_task("eval", total=4, info="")
        for _ in range(4):
            clock.now += 0.25
            bar.update(task, advance=1)
    assert out.getvalue() == "eval 4/4 (100%), 4.00 it/s, elapsed 0:00:01, ETA 0:00:00\n"


def test_off_a_terminal_progress_is_plain_and_a_cli_run_says_rate_and_lr(
    tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert isinstance(progress(), PlainProgress)  # pytest's captured stderr is not a terminal
    out = tmp_path / "o"
    assert main(["sft", *FAST, f"model.path={tiny_dir}", "train.max_steps=3", f"output_dir={out}"]) == 0
    err = capsys.readouterr().err
    last = read_metrics(out / "metrics.jsonl")[-1]
    line = next(x for x in err.splitlines() if x.startswith("sft 3/3 (100%), "))
    assert line.endswith(f", loss {last['loss']:.4f}, lr {last['lr']:.2e}") and "it/s" in line + "s/it"


def test_scalars_are_the_finite_numbers_by_stage() -> None:
    record = {"stage": "grpo", "step": 3, "reward": 0.5, "ok": True, "kl": float("nan"), "n": 4, "name": "x"}
    assert scalars(record) == {"grpo/reward": 0.5, "grpo/n": 4.0}


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="the tensorboard extra is not installed")
def test_tensorboard_holds_every_record_of_metrics_jsonl(tmp_path: Path, tiny_dir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "o"
    argv = [
        "sft",
        *FAST,
        f"model.path={tiny_dir}",
        "train.max_steps=3",
        "logging.tensorboard=true",
        f"output_dir={out}",
    ]
    assert main(argv) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    loss = [(e.step, e.value) for e in events.Scalars("sft/loss")]
    want = [(r["step"], r["loss"]) for r in read_metrics(out / "metrics.jsonl")]
    assert [s for s, _ in loss] == [1, 2, 3]
    assert [v for _, v in loss] == pytest.approx([v for _, v in want], rel=1e-6)  # stored as float32


def test_a_missing_extra_is_one_line_naming_the_key_and_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(metrics.EXTRAS, "wandb", "posttrain_tests_no_such_module")
    with pytest.raises(ConfigError) as err:
        use_logging(LoggingConfig(wandb="my-project"))
    assert str(err.value) == (
        "logging.wandb: logging.wandb needs the posttrain_tests_no_such_module package, which is not installed: "
        "pip install 'posttrain[posttrain_tests_no_such_module]'"
    )


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="the wandb extra is not installed")
def test_wandb_offline_logs_the_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    use_logging(LoggingConfig(wandb="posttrain-test"))
    writer = metrics.MetricsWriter(tmp_path / "run" / "metrics.jsonl")
    for step in (1, 2):
        writer.write({"stage": "sft", "step": step, "loss": 1.0 / step})
    run = writer._extras[0].run  # type: ignore[attr-defined]
    assert (run.summary["sft/loss"], run.summary["_step"]) == (0.5, 2)  # the last record, at its own step
    writer.close()
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
