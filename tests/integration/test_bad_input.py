"""Every bad input the CLI promises to reject: one line naming file, line and field; exit 2."""

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


def test_unknown_config_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  max_step: 3\n")
    err = run_err(capsys, ["sft", "--config", str(cfg)])
    assert err == f"posttrain: error: {cfg}:2: train.max_step: unknown key 'max_step'; did you mean 'max_steps'?"


def test_wrong_type_override(capsys: pytest.CaptureFixture[str]) -> None:
    err = run_err(capsys, ["sft", "optim.lr=fast"])
    assert err == "posttrain: error: command line: optim.lr: expected a number, got 'fast'"


def test_malformed_json_line(tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "1+1=", "completion": "2"}) + "\n{oops\n")
    err = run_err(capsys, ["sft", *FAST, f"model.path={tiny_dir}", "data.task=jsonl", f"data.path={data}",
                           f"output_dir={tmp_path / 'o'}"])  # fmt: skip
    assert err.startswith(f"posttrain: error: {data}:2: ")


def test_missing_field_and_wrong_type(tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n" + json.dumps({"completion": "x"}) + "\n")
    args = ["sft", *FAST, f"model.path={tiny_dir}", "data.task=jsonl", f"data.path={data}", f"output_dir={tmp_path}"]
    assert "d.jsonl:2: prompt: missing field 'prompt'" in run_err(capsys, args)
    data.write_text(json.dumps({"prompt": 5, "completion": "b"}) + "\n")
    assert run_err(capsys, args).endswith(f"{data}:1: prompt: expected a string, got int")


def test_prompt_longer_than_context(tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.jsonl"
    rows = [{"prompt": "1+1=?", "completion": "2"}] * 3 + [{"prompt": "9" * 200, "completion": "1"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    err = run_err(capsys, ["sft", *FAST, f"model.path={tiny_dir}", "data.task=jsonl", f"data.path={data}",
                           "train.batch_size=2", "train.micro_batch_size=2", f"output_dir={tmp_path / 'o'}"])  # fmt: skip
    assert err.endswith(f"{data}:4: prompt: prompt is 200 tokens, longer than the model's context of 64")


def test_model_dir_that_is_not_a_causal_lm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bert = tmp_path / "vit"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "vit", "architectures": ["ViTModel"]}))
    err = run_err(capsys, ["eval", *FAST, f"model.path={bert}", f"output_dir={tmp_path / 'o'}"])
    assert err == (
        f"posttrain: error: {bert / 'config.json'}: model_type: "
        "not a causal language model (model_type='vit', architectures=['ViTModel'])"
    )
    err = run_err(capsys, ["eval", f"model.path={tmp_path / 'nope'}", f"output_dir={tmp_path / 'o'}"])
    assert err == f"posttrain: error: {tmp_path / 'nope'}: model.path: model directory not found"


def test_vllm_backend_without_a_gpu_or_vllm(tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """CI has neither: the run stops at the engine's construction with the fix, not a traceback."""
    err = run_err(capsys, ["grpo", *FAST, f"model.path={tiny_dir}", "engine.backend=vllm",
                           f"output_dir={tmp_path / 'o'}"])  # fmt: skip
    assert err.startswith("posttrain: error: engine.backend: the vllm backend needs ")
