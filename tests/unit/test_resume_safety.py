"""Resume that neither runs foreign code nor gives up on an intact checkpoint.

Each test reproduces one reported failure:

- "``--resume`` loads ``trainer_state.pt`` with ``torch.load(..., weights_only=False)``,
  so a checkpoint directory from elsewhere can run arbitrary code."
- "A kill while the tiny base model is written leaves ``base/config.json`` empty and
  every rerun fails until the user deletes it."
- "A dangling or garbage ``checkpoints/latest`` makes ``--resume`` restart from step 0
  and discard logged steps although an intact ``step_*`` exists"; "truncated or garbage
  model.safetensors or trainer_state.pt" must not be a bare traceback.
- "A metrics.jsonl ending in half a record blocks ``--resume`` with a JSONDecodeError."
- "full disk during a save (say 'no space left on device', keep the previous checkpoint)".
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import PreTrainedModel

import posttrain.train.checkpoint as checkpoint
from posttrain.cli import main
from posttrain.config import OptimConfig
from posttrain.errors import CheckpointError, DataError
from posttrain.models.io import load_model, load_tokenizer
from posttrain.models.tiny import build_tiny
from posttrain.train.checkpoint import STATE_FILE, latest_checkpoint, load_trainer_state, save_checkpoint
from posttrain.train.loop import build_optimizer
from posttrain.train.metrics import MetricsWriter, read_metrics
from tests.conftest import FAST, TINY


@pytest.fixture
def parts(tiny_dir: Path) -> tuple[Any, Any, Any, Any]:
    model, tok = load_model(tiny_dir), load_tokenizer(tiny_dir)
    opt, sch = build_optimizer(model, OptimConfig(), 10)
    ids = torch.tensor([[1, 2, 3, 4]])
    model(ids, labels=ids).loss.backward()  # an optimiser state with tensors in it
    opt.step()
    sch.step()
    return model, tok, opt, sch


def one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(e.value)
    assert "\n" not in text, text
    return text


class Payload:
    """Unpickling this creates ``marker``: any code could run in its place."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


# --- 1. the trainer state loads with weights_only=True ---------------------------------


def test_state_file_loads_with_weights_only_and_restores_every_rng(tmp_path: Path, parts: Any) -> None:
    model, tok, opt, sch = parts
    follower = {k: v.clone() for k, v in model.state_dict().items()}  # what the RL loop keeps in extra
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    np.random.standard_normal()  # numpy caches a second gaussian: part of its state
    path = save_checkpoint(tmp_path, 1, model, tok, opt, sch, extra={"sampler": follower, "sampler_step": 1})
    expected = (random.random(), np.random.standard_normal(), np.random.rand(), torch.rand(2))
    state = torch.load(path / STATE_FILE, weights_only=True)  # plain tensors and values only
    assert state["step"] == 1 and state["extra"]["sampler_step"] == 1
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    loaded = load_trainer_state(path, opt, sch)
    assert all(torch.equal(follower[k], loaded["extra"]["sampler"][k]) for k in follower)
    got = (random.random(), np.random.standard_normal(), np.random.rand(), torch.rand(2))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def test_state_file_with_a_code_payload_is_refused(tmp_path: Path, parts: Any) -> None:
    model, tok, opt, sch = parts
    root = tmp_path / "checkpoints"
    path = save_checkpoint(root, 1, model, tok, opt, sch)
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "extra": {"x": Payload(marker)}}, path / STATE_FILE)
    with pytest.raises(CheckpointError) as e:
        load_trainer_state(path, opt, sch)
    assert e.value.file == str(path / STATE_FILE)
    assert "posix.mkdir" in one_line(e) and "refusing" in one_line(e)
    with pytest.raises(CheckpointError) as e2:  # picking the checkpoint to resume refuses it too
        latest_checkpoint(root)
    assert e2.value.file == str(path / STATE_FILE)
    assert not marker.exists()


def test_cli_resume_from_a_payload_exits_2_with_one_line(
    tmp_path: Path, tiny_dir: Path, parts: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    model, tok, opt, sch = parts
    out = tmp_path / "run"
    path = save_checkpoint(out / "checkpoints", 1, model, tok, opt, sch)
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "x": Payload(marker)}, path / STATE_FILE)
    code = main(["sft", "--resume", *FAST, f"output_dir={out}", f"model.path={tiny_dir}", "train.max_steps=2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not marker.exists()
    assert err[-1].startswith(f"posttrain: error: {path / STATE_FILE}: refusing")


def test_state_written_by_the_previous_release_still_resumes(tmp_path: Path, parts: Any) -> None:
    """The old format pickled numpy's RNG state (an ndarray); it is read with numpy's array type allowed."""
    model, tok, opt, sch = parts
    path = save_checkpoint(tmp_path, 4, model, tok, opt, sch)
    np.random.seed(5)
    legacy = {
        "step": 4,
        "optimizer": opt.state_dict(),
        "scheduler": sch.state_dict(),
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
        "extra": {},
    }
    torch.save(legacy, path / STATE_FILE)
    expected = np.random.rand()
    np.random.seed(6)
    assert latest_checkpoint(tmp_path) == path
    assert load_trainer_state(path, opt, sch)["step"] == 4
    assert np.random.rand() == expected


# --- 2. the tiny base model is built atomically -----------------------------------------


def test_kill_while_building_the_tiny_model_leaves_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = PreTrainedModel.save_pretrained

    def killed(self: PreTrainedModel, save_directory: Any, *args: Any, **kwargs: Any) -> None:
        Path(save_directory, "config.json").write_text("")  # as far as the write got
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", killed)
    base = tmp_path / "run" / "base"
    with pytest.raises(KeyboardInterrupt):
        build_tiny(TINY, base, seed=0)
    assert not (base / "config.json").exists()  # the next run builds it again
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", real)
    assert build_tiny(TINY, base, seed=0) == base
    load_model(base)
    assert [p.name for p in base.parent.iterdir()] == ["base"]  # no temporary directory left


# --- 3. a broken pointer or checkpoint falls back to an intact one ----------------------


def three_checkpoints(root: Path, parts: Any) -> list[Path]:
    model, tok, opt, sch = parts
    return [save_checkpoint(root, s, model, tok, opt, sch, keep=3) for s in (2, 4, 6)]


@pytest.mark.parametrize("pointer", ["step_000099\n", "\x00\xffgarbage", "", "../../elsewhere\n"])
def test_dangling_or_garbage_latest_falls_back_to_the_newest_checkpoint(
    tmp_path: Path, parts: Any, pointer: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "checkpoints"
    newest = three_checkpoints(root, parts)[-1]
    (root / "latest").write_text(pointer)
    assert latest_checkpoint(root) == newest
    err = capsys.readouterr().err
    assert "latest" in err and "step_000006" in err


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("model.safetensors", "truncate"),
        ("model.safetensors", "garbage"),
        (STATE_FILE, "truncate"),
        (STATE_FILE, "garbage"),
        (STATE_FILE, "empty"),
        (STATE_FILE, "missing"),
    ],
)
def test_broken_newest_checkpoint_falls_back_to_an_older_one(
    tmp_path: Path, parts: Any, name: str, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "checkpoints"
    older, newest = three_checkpoints(root, parts)[1:]
    spoil(newest / name, damage)
    assert latest_checkpoint(root) == older
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert str(newest / name) in err.replace("\n", "") or name in err
    assert "step_000004" in err
    model, tok, opt, sch = parts
    assert load_trainer_state(older, opt, sch)["step"] == 4


def test_no_loadable_checkpoint_is_one_line_naming_the_file(tmp_path: Path, parts: Any) -> None:
    root = tmp_path / "checkpoints"
    for path in three_checkpoints(root, parts):
        spoil(path / "model.safetensors", "truncate")
    with pytest.raises(CheckpointError) as e:
        latest_checkpoint(root)
    assert e.value.file == str(root / "step_000006" / "model.safetensors")
    assert "no loadable checkpoint" in one_line(e)


def test_broken_state_file_given_directly_is_one_line(tmp_path: Path, parts: Any) -> None:
    model, tok, opt, sch = parts
    path = save_checkpoint(tmp_path, 1, model, tok, opt, sch)
    spoil(path / STATE_FILE, "truncate")
    with pytest.raises(CheckpointError) as e:
        load_trainer_state(path, opt, sch)
    assert e.value.file == str(path / STATE_FILE)
    one_line(e)


def test_no_checkpoint_at_all_starts_from_scratch(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "checkpoints") is None


def spoil(path: Path, damage: str) -> None:
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(bytes(range(256)) * 8)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()


# --- 4. a torn last line of metrics.jsonl is dropped -------------------------------------


def test_torn_last_metrics_line_is_dropped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert read_metrics(path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    assert "torn" in capsys.readouterr().err
    writer = MetricsWriter(path, resume_step=2)
    writer.write({"step": 3, "loss": 1.0})
    writer.close()
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]


def test_garbage_inside_metrics_is_one_line_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(DataError) as e:
        read_metrics(path)
    assert e.value.file == str(path) and e.value.line == 2
    one_line(e)


# --- 5. a full disk during a save keeps the previous checkpoint --------------------------


def full_disk(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("writer", ["trainer state", "model"])
def test_full_disk_during_a_save_keeps_the_previous_checkpoint(
    tmp_path: Path, parts: Any, writer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tok, opt, sch = parts
    root = tmp_path / "checkpoints"
    first = save_checkpoint(root, 2, model, tok, opt, sch)
    if writer == "model":
        monkeypatch.setattr(type(model), "save_pretrained", full_disk)
    else:
        monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(root, 4, model, tok, opt, sch)
    monkeypatch.undo()
    assert e.value.file == str(root)
    assert "no space left on device" in one_line(e)
    assert (root / "latest").read_text().strip() == first.name
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000002"]  # the partial save removed
    assert latest_checkpoint(root) == first
    assert load_trainer_state(first, opt, sch)["step"] == 2
