"""Evaluation with its cache and time-limited checks, `posttrain predict` and `posttrain predict-rl`, on a tiny model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

import posttrain.eval.checking as checking
from posttrain.cli import main
from posttrain.config import load_config
from posttrain.eval.sampling import evaluate_model
from posttrain.models.io import load_model, load_tokenizer
from posttrain.models.tiny import build_tiny
from posttrain.rollout.torch_engine import TorchEngine
from posttrain.tasks.registry import make_task
from tests.conftest import FAST, TINY
from tests.worker_checks import hang_on_gold


def count_generate_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = TorchEngine.generate

    def counting(self: TorchEngine, prompts: list[list[int]], sampling: Any) -> Any:
        calls.append(len(prompts))
        return real(self, prompts, sampling)

    monkeypatch.setattr(TorchEngine, "generate", counting)
    return calls


def test_cache_hits_are_identical_and_a_larger_n_draws_only_new_chunks(
    tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config(None, [*FAST, "eval.chunk_size=2"])
    task, model, tok = make_task(cfg.data), load_model(tiny_dir), load_tokenizer(tiny_dir)
    calls = count_generate_calls(monkeypatch)

    def run(n: int, cache: str) -> dict[str, Any]:
        run_cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, samples_per_problem=n))
        return evaluate_model(model, tok, task, run_cfg, str(tiny_dir), tmp_path / cache)

    first = run(4, "c")
    assert calls == [16, 16, 8]  # two chunks of 8 problems x 2 samples, then greedy
    assert run(4, "c") == first and len(calls) == 3  # a rerun samples nothing
    larger = run(8, "c")
    assert calls[3:] == [16, 16]  # only chunks 2 and 3 are new
    assert larger == run(8, "fresh")  # and they are exactly what a fresh n = 8 draws
    assert larger["pass_at_k"]["1"] == pytest.approx(larger["pass_at_k"]["1"])
    assert set(larger["pass_at_k"]) == {"1", "2", "4", "8"}
    # a different model is a different entry, however it is named
    other = build_tiny(TINY, tmp_path / "other", seed=1)
    other_result = evaluate_model(load_model(other), load_tokenizer(other), task, cfg, str(other), tmp_path / "c")
    assert other_result["model_hash"] != first["model_hash"]


def test_a_hanging_check_leaves_its_problem_unscored_and_counted(
    tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "math.jsonl"
    rows = [
        {"prompt": "1+1=?\n", "answer": "2"},
        {"prompt": "2+2=?\n", "answer": "HANG"},
        {"prompt": "3+3=?\n", "answer": "6"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(checking, "judge", hang_on_gold)  # sent to the workers by reference
    out = tmp_path / "e"
    args = [*FAST, f"model.path={tiny_dir}", "data.task=jsonl", f"data.path={data}", f"data.eval_path={data}",
            "data.verifier=math_verify", "reward.timeout_s=2", "eval.chunk_size=2", f"output_dir={out}"]  # fmt: skip
    assert main(["eval", *args]) == 0
    r = json.loads((out / "eval.json").read_text())["model"]
    assert r["num_problems"] == 3 and r["num_scored_problems"] == 2
    assert r["check_timeouts"] >= 1 and r["check_timeouts"] + r["checks_skipped"] == 5  # 4 samples + greedy
    assert [u["id"] for u in r["unscored_problems"]] == ["math.jsonl:2"]
    assert set(r["pass_at_k"]) == {"1", "2", "4"}  # the other problems are still scored
    assert "1 of 3 problems unscored" in (out / "eval.md").read_text()
    assert "problems unscored" in capsys.readouterr().err


def test_malformed_benchmark_row_is_one_line_naming_file_line_and_field(
    tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "gsm.jsonl"
    data.write_text(json.dumps({"question": "Q", "answer": "#### 3"}) + "\n" + json.dumps({"question": "Q"}) + "\n")
    args = ["eval", *FAST, f"model.path={tiny_dir}", "data.task=jsonl", "data.format=gsm8k", f"data.path={data}"]
    assert main([*args, f"output_dir={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err.strip()
    shape = "{question, answer} with the answer ending in '#### <number>'"
    assert err == f"posttrain: error: {data}:2: answer: missing field 'answer' (expected {shape})"


def test_predict_command_ranks_checkpoints(tmp_path: Path, tiny_dir: Path) -> None:
    other = build_tiny(TINY, tmp_path / "other", seed=1)
    out = tmp_path / "p"
    models = f"eval.models={{first: {tiny_dir}, second: {other}}}"
    assert main(["predict", *FAST, models, f"output_dir={out}"]) == 0
    prediction = json.loads((out / "predict.json").read_text())
    assert sorted(prediction["predicted_order"]) == ["first", "second"]
    assert set(prediction["predictors"]) == {"pass@1", "pass@4", "heldout_nll"}
    text = (out / "predict.md").read_text()
    assert "Predicted best after RL" in text and "Trusted predictor" in text
    assert set(json.loads((out / "eval.json").read_text())) == {"first", "second"}
    assert (out / "plots" / "pass_at_k.png").read_bytes().startswith(b"\x89PNG")
    # one checkpoint is not a ranking
    assert main(["predict", *FAST, f"model.path={tiny_dir}", f"output_dir={out}"]) == 2


def test_predict_rl_end_to_end(tmp_path: Path) -> None:
    recipe = tmp_path / "p.yaml"
    recipe.write_text(
        "predict:\n  rl_samples_per_problem: 2\n  variants:\n"
        "    one-epoch: {train.epochs: 1}\n"
        "    half-data: {train: {epochs: 1}, data: {train_fraction: 0.5}}\n"
        "    short-only: {train.epochs: 1, data.max_demo_tokens: 4}\n"
        # the GRPO stage needs a reward with a spread (an untrained model's are all 0): it must update
        "stages:\n  grpo: {train: {max_steps: 1}, grpo: {overlong: penalty, overlong_reward: -1.0, "
        "drop_uniform_groups: false}}\n  eval: {data: {arithmetic: {direct_fraction: 0.0}}}\n"
    )
    out = tmp_path / "run"
    overrides = [
        *FAST,
        "data.num_train=64",
        "data.arithmetic.direct_fraction=0.5",
        "eval.chunk_size=2",
        f"output_dir={out}",
    ]
    assert main(["predict-rl", "--config", str(recipe), *overrides]) == 0
    record = json.loads((out / "predict-rl.json").read_text())
    assert record["sft_steps"] == {"one-epoch": 4, "half-data": 2, "short-only": 2}
    assert set(record["post_sft"]) == set(record["post_rl"]) == {"one-epoch", "half-data", "short-only"}
    assert record["post_rl"]["one-epoch"]["samples_per_problem"] == 2
    predictors = [r["predictor"] for r in record["spearman_with_post_rl_pass1"]]
    assert predictors[:3] == ["post-SFT pass@1", "held-out NLL (negated)", "pass@4"]
    # the two one-epoch-budget variants share 2 steps, but a group needs three checkpoints
    assert record["spearman_at_equal_sft_budget"] is None
    text = (out / "predict-rl.md").read_text()
    assert "Spearman" in text and "| short-only | train.epochs=1, data.max_demo_tokens=4 | 2 |" in text
    assert (out / "plots" / "predictors.png").read_bytes().startswith(b"\x89PNG")
    # resumed, nothing is trained or sampled again and the record is the same
    assert main(["predict-rl", "--config", str(recipe), "--resume", *overrides]) == 0
    again = json.loads((out / "predict-rl.json").read_text())
    assert again["spearman_with_post_rl_pass1"] == record["spearman_with_post_rl_pass1"]


def test_a_bad_variant_names_the_recipe_and_the_variant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "p.yaml"
    recipe.write_text("predict:\n  variants:\n    a: {train.epochs: 1}\n    b: {train.epoch: 2}\n")
    assert main(["predict-rl", "--config", str(recipe), f"output_dir={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err.strip()
    where = f"{recipe}: predict.variants.b.train.epoch"
    assert err == f"posttrain: error: {where}: unknown key 'epoch'; did you mean 'epochs'?"
