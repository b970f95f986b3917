"""A few real steps of every recipe on a tiny model, resume, round trips, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import posttrain.recipes.grpo as grpo_recipe
import posttrain.recipes.sft as sft_recipe
from posttrain.config import load_config
from posttrain.train.metrics import read_metrics
from tests.conftest import FAST


def cfg_for(tmp_path: Path, tiny_dir: Path, name: str, *extra: str):
    return load_config(None, [*FAST, f"output_dir={tmp_path / name}", f"model.path={tiny_dir}", *extra])


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_sft_lowers_loss_changes_weights_and_loads_in_transformers(tmp_path: Path, tiny_dir: Path) -> None:
    cfg = cfg_for(tmp_path, tiny_dir, "sft", "train.max_steps=25", "optim.lr=3e-3")
    final = sft_recipe.train_sft(cfg)
    losses = [r["loss"] for r in read_metrics(tmp_path / "sft" / "metrics.jsonl")]
    assert len(losses) == 25
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    before, after = weights(tiny_dir), weights(final)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # plain transformers loads what we wrote, and computes the same logits
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    ids = torch.tensor([tok("3+4=?\n")["input_ids"]])
    reloaded = AutoModelForCausalLM.from_pretrained(final)
    assert torch.allclose(model(ids).logits, reloaded(ids).logits)
    record = read_metrics(tmp_path / "sft" / "metrics.jsonl")[0]
    assert {"stage", "step", "loss", "lr", "tokens_per_s"} <= set(record)


class Crash(Exception):
    pass


def crash_after(monkeypatch: pytest.MonkeyPatch, module, calls: int) -> None:
    real = module.optimizer_step
    count = {"n": 0}

    def step(*args, **kwargs):
        if count["n"] == calls:
            raise Crash
        count["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "optimizer_step", step)


def test_sft_resume_equals_uninterrupted(tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = ("train.max_steps=8", "train.save_every=3", "optim.schedule=cosine", "optim.warmup_steps=2")
    straight = sft_recipe.train_sft(cfg_for(tmp_path, tiny_dir, "a", *extra))
    cfg = cfg_for(tmp_path, tiny_dir, "b", *extra)
    crash_after(monkeypatch, sft_recipe, 7)  # killed during step 8, last checkpoint at 6
    with pytest.raises(Crash):
        sft_recipe.train_sft(cfg)
    monkeypatch.undo()
    resumed = sft_recipe.train_sft(cfg, resume=True)
    a = [r["loss"] for r in read_metrics(tmp_path / "a" / "metrics.jsonl")]
    b = [r["loss"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl")]
    assert [r["step"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl")] == list(range(1, 9))
    assert b == pytest.approx(a, rel=1e-5, abs=1e-6)
    wa, wb = weights(straight), weights(resumed)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_grpo_steps_change_weights_and_log_metrics(tmp_path: Path, tiny_dir: Path) -> None:
    cfg = cfg_for(
        tmp_path, tiny_dir, "grpo", "train.max_steps=3", "grpo.drop_uniform_groups=false", "grpo.kl_coef=0.05",
        "grpo.minibatches=2", "optim.lr=1e-3", "grpo.overlong=penalty", "grpo.overlong_reward=-1.0",
    )  # fmt: skip
    # a random model rarely answers right; penalising truncation still gives groups a spread of rewards
    final = grpo_recipe.train_grpo(cfg)
    records = read_metrics(tmp_path / "grpo" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    first = records[0]
    for key in ("reward", "groups_dropped", "clip_frac", "kl", "entropy", "completion_len", "loss", "lr"):
        assert key in first, key
    assert first["ratio"] == pytest.approx(1.0, abs=1e-4)  # on-policy: sampler logprobs = trainer's
    assert first["logprob_gap"] == pytest.approx(0.0, abs=1e-4)
    assert first["kl"] == pytest.approx(0.0, abs=1e-6)  # policy = reference before any update
    before, after = weights(tiny_dir), weights(final)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_grpo_resume_equals_uninterrupted(tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = ("train.max_steps=4", "train.save_every=2", "grpo.overlong=penalty", "grpo.overlong_reward=-1.0",
             "optim.lr=1e-3")  # fmt: skip
    grpo_recipe.train_grpo(cfg_for(tmp_path, tiny_dir, "a", *extra))
    cfg = cfg_for(tmp_path, tiny_dir, "b", *extra)
    crash_after(monkeypatch, grpo_recipe, 3)
    with pytest.raises(Crash):
        grpo_recipe.train_grpo(cfg)
    monkeypatch.undo()
    grpo_recipe.train_grpo(cfg, resume=True)
    a = read_metrics(tmp_path / "a" / "metrics.jsonl")
    b = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["iteration"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        assert rb["reward"] == ra["reward"]
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5, abs=1e-7)


def test_pipeline_end_to_end(tmp_path: Path) -> None:
    from posttrain.cli import main

    out = tmp_path / "run"
    overrides = [*FAST, f"output_dir={out}", "stages.sft.train.max_steps=6", "stages.grpo.train.max_steps=2"]
    # the packaged quickstart, by name
    assert main(["run", "--config", "quickstart", *overrides]) == 0
    results = json.loads((out / "eval.json").read_text())
    assert set(results) == {"sft", "grpo"}
    for r in results.values():
        assert set(r["pass_at_k"]) == {"1", "2", "4"}
        assert r["pass_at_k"]["1"] <= r["pass_at_k"]["2"] <= r["pass_at_k"]["4"]
        for key in ("maj_at_k", "greedy_accuracy", "mean_completion_tokens", "heldout_nll"):
            assert r[key] is not None
        assert r["num_problems"] == 8 and r["samples_per_problem"] == 4
    stages = {r["stage"] for r in read_metrics(out / "metrics.jsonl")}
    assert stages == {"sft", "grpo"}
    report = (out / "report.md").read_text()
    assert "plots/pass_at_k.png" in report
    for png in ("loss.png", "reward.png", "pass_at_k.png"):
        assert (out / "plots" / png).read_bytes().startswith(b"\x89PNG")
    # each stage wrote a loadable Hugging Face directory
    AutoModelForCausalLM.from_pretrained(out / "grpo" / "final")
    # resume of a finished run skips the training stages and reproduces the evaluation
    assert main(["run", "--config", "quickstart", "--resume", *overrides]) == 0
    assert json.loads((out / "eval.json").read_text()) == results


def test_eval_and_generate_commands(tmp_path: Path, tiny_dir: Path) -> None:
    from posttrain.cli import main

    common = [*FAST, f"model.path={tiny_dir}"]
    assert main(["eval", *common, f"output_dir={tmp_path / 'e'}"]) == 0
    results = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert results["model"]["samples_per_problem"] == 4
    assert (tmp_path / "e" / "eval.md").read_text().count("|") > 4
    assert main(["generate", *common, f"output_dir={tmp_path / 'g'}", "--prompt", "1+1=?\n"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "g" / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["prompt"] == "1+1=?\n"
