"""LoRA through peft on the tiny model: only adapters train, they merge exactly, resume is exact.

Also the memory knobs that touch the model: gradient checkpointing computes the
same losses and weights as a plain run, and QLoRA on a machine without CUDA and
bitsandbytes fails in one line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.models.llama.modeling_llama import LlamaMLP

import posttrain.recipes.dpo as dpo_recipe
import posttrain.recipes.grpo as grpo_recipe
import posttrain.recipes.launch as launch
import posttrain.recipes.online_dpo as online
import posttrain.recipes.sft as sft_recipe
from posttrain.cli import main
from posttrain.config import load_config
from posttrain.errors import ModelError
from posttrain.models.io import load_model
from posttrain.train.metrics import read_metrics
from tests.conftest import FAST
from tests.integration.test_recipes import Crash, crash_after, weights

LORA = ("lora.r=4", "lora.alpha=8", "optim.lr=1e-2")
PROMPTS = ["3+4=?\n", "9-2=?\n", "1+1=?\n"]


def cfg_for(tmp_path: Path, model: Path, name: str, *extra: str):
    return load_config(None, [*FAST, f"output_dir={tmp_path / name}", f"model.path={model}", *LORA, *extra])


class Watch:
    """The recipe's model as ``open_stage`` returned it, and a copy of its weights at that moment."""

    def __init__(self) -> None:
        self.model: Any = None
        self.start: dict[str, torch.Tensor] = {}

    def changed(self) -> set[str]:
        now = self.model.state_dict()
        return {k for k in now if not torch.equal(now[k], self.start[k])}


def watch(mp: pytest.MonkeyPatch, module: ModuleType) -> Watch:
    """Catch the model ``open_stage`` returns, whether the recipe calls it directly or through ``launch``."""
    w = Watch()
    for mod in (module, launch):
        if not hasattr(mod, "open_stage"):
            continue

        def opened(*args: Any, real: Any = mod.open_stage, **kwargs: Any) -> Any:
            stage = real(*args, **kwargs)
            w.model, w.start = stage.model, {k: v.clone() for k, v in stage.model.state_dict().items()}
            return stage

        mp.setattr(mod, "open_stage", opened)
    return w


def assert_only_adapters_trained(w: Watch) -> None:
    changed = w.changed()
    assert changed, "nothing trained"
    assert all(".lora_A." in k or ".lora_B." in k for k in changed), sorted(changed)[:5]
    trainable = {n for n, p in w.model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


@pytest.fixture(scope="module")
def lora_sft(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[tuple[Path, Watch]]:
    """Six LoRA SFT steps, shared by the tests that read its adapters."""
    root = tmp_path_factory.mktemp("lora")
    with pytest.MonkeyPatch.context() as mp:
        w = watch(mp, sft_recipe)
        final = sft_recipe.train_sft(cfg_for(root, tiny_dir, "sft", "train.max_steps=6"))
    yield final, w


def test_lora_sft_trains_only_adapters_saved_in_peft_format(lora_sft: tuple[Path, Watch], tiny_dir: Path) -> None:
    final, w = lora_sft
    losses = [r["loss"] for r in read_metrics(final.parent / "metrics.jsonl")]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.05
    assert_only_adapters_trained(w)  # and every base weight bit-identical to the start
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {p.name for p in final.iterdir()}
    assert Path(json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"]).is_absolute()
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), final)
    saved = peft_model.state_dict()
    trained = w.model.state_dict()
    lora_keys = [k for k in trained if ".lora_" in k]
    assert lora_keys and all(torch.equal(saved[k], trained[k]) for k in lora_keys)


def test_merge_round_trip_generates_what_the_adapters_generate(
    lora_sft: tuple[Path, Watch], tiny_dir: Path, tmp_path: Path
) -> None:
    final, _ = lora_sft
    merged_dir = tmp_path / "merged"
    assert main(["merge", "--adapter", str(final), "--out", str(merged_dir)]) == 0
    assert not (merged_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()  # plain transformers, no peft
    adapters = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), final).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    in_memory = load_model(final).eval()  # what eval, generate and a next stage load
    tok = AutoTokenizer.from_pretrained(merged_dir)
    for prompt in PROMPTS:
        ids = torch.tensor([tok(prompt)["input_ids"]])
        with torch.no_grad():
            want = adapters(ids).logits
            assert torch.allclose(merged(ids).logits, want, atol=1e-5)
            assert torch.allclose(in_memory(ids).logits, want, atol=1e-5)
            assert not torch.allclose(base(ids).logits, want, atol=1e-3)  # the adapters do change the model
            kw: dict[str, Any] = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": tok.pad_token_id}
            assert torch.equal(merged.generate(ids, **kw), adapters.generate(input_ids=ids, **kw))


def test_grpo_from_a_lora_stage_trains_fresh_adapters(
    lora_sft: tuple[Path, Watch], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next stage starts from the previous stage's adapters merged; the KL reference is its base."""
    w = watch(monkeypatch, grpo_recipe)
    cfg = cfg_for(
        tmp_path, lora_sft[0], "grpo", "train.max_steps=2", "grpo.drop_uniform_groups=false", "grpo.kl_coef=0.05",
        "grpo.overlong=penalty", "grpo.overlong_reward=-1.0", "train.gradient_checkpointing=true",
    )  # fmt: skip
    grpo_recipe.train_grpo(cfg)
    assert (tmp_path / "grpo" / "merged_base" / "config.json").is_file()
    assert_only_adapters_trained(w)
    records = read_metrics(tmp_path / "grpo" / "metrics.jsonl")
    assert records[0]["ratio"] == pytest.approx(1.0, abs=1e-4)  # the sampler's logprobs through peft = trainer's
    assert records[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # fresh adapters: policy = its base
    assert records[-1]["kl"] > 0  # after an update the adapters-off reference differs from the policy


def test_offline_dpo_with_lora_trains_only_adapters(
    tmp_path: Path, tiny_dir: Path, prefs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = watch(monkeypatch, dpo_recipe)
    dpo_recipe.train_dpo(cfg_for(tmp_path, tiny_dir, "dpo", f"data.path={prefs}", "train.max_steps=2"))
    assert read_metrics(tmp_path / "dpo" / "metrics.jsonl")[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert_only_adapters_trained(w)


# a reward that ranks nearly every sample (-len), so each prompt yields a pair
SHORTER = "reward.components=[{kind: python, function: tests.rewards:shorter_is_better}]"


def test_online_dpo_with_lora_uses_the_adapters_off_reference(
    tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = watch(monkeypatch, online)
    extra = (
        "train.max_steps=2",
        "rollout.prompts_per_step=4",
        "rollout.samples_per_prompt=4",
        "dpo.pairs=best_worst",
        SHORTER,
    )
    online.train_online_dpo(cfg_for(tmp_path, tiny_dir, "o", *extra))
    loss = [r["loss"] for r in read_metrics(tmp_path / "o" / "metrics.jsonl")]
    assert loss[0] == pytest.approx(math.log(2), abs=1e-5)  # policy = reference at the start
    assert abs(loss[1] - math.log(2)) > 1e-4  # the fixed reference (adapters off) stayed behind
    assert_only_adapters_trained(w)


def test_online_dpo_with_lora_resumes_with_the_initial_generator(
    tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never synced (offline DPO on the policy's own samples): resume rebuilds the step-0 generator."""
    extra = ("train.max_steps=4", "train.save_every=2", "rollout.sync_every=0", "rollout.prompts_per_step=4",
             "rollout.samples_per_prompt=4", "dpo.pairs=best_worst", SHORTER)  # fmt: skip
    online.train_online_dpo(cfg_for(tmp_path, tiny_dir, "a", *extra))
    cfg = cfg_for(tmp_path, tiny_dir, "b", *extra)
    real_step = online.optimizer_step
    crash_after(monkeypatch, online, 3)
    with pytest.raises(Crash):
        online.train_online_dpo(cfg)
    monkeypatch.setattr(online, "optimizer_step", real_step)
    online.train_online_dpo(cfg, resume=True)
    a, b = read_metrics(tmp_path / "a" / "metrics.jsonl"), read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["reward"] for r in b] == [r["reward"] for r in a]  # the same samples: the same generator
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-5)


def test_lora_sft_resume_equals_uninterrupted(tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = ("train.max_steps=6", "train.save_every=3", "optim.schedule=cosine", "lora.dropout=0.1")
    straight = sft_recipe.train_sft(cfg_for(tmp_path, tiny_dir, "a", *extra))
    cfg = cfg_for(tmp_path, tiny_dir, "b", *extra)
    crash_after(monkeypatch, sft_recipe, 5)  # killed during step 6, last checkpoint at 3
    with pytest.raises(Crash):
        sft_recipe.train_sft(cfg)
    monkeypatch.undo()
    assert (tmp_path / "b" / "checkpoints" / "step_000003" / "adapter_model.safetensors").is_file()
    resumed = sft_recipe.train_sft(cfg, resume=True)
    a = [r["loss"] for r in read_metrics(tmp_path / "a" / "metrics.jsonl")]
    b = [r["loss"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl")]
    assert b == pytest.approx(a, rel=1e-6)
    wa, wb = (
        load_file(str(straight / "adapter_model.safetensors")),
        load_file(str(resumed / "adapter_model.safetensors")),
    )
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-7) for k in wa)


def test_gradient_checkpointing_matches_the_plain_run(
    tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs, calls = {}, {"false": 0, "true": 0}
    real_mlp = LlamaMLP.forward
    for gc in ("false", "true"):
        cfg = load_config(
            None, [*FAST, f"output_dir={tmp_path / gc}", f"model.path={tiny_dir}", "train.max_steps=3",
                   f"train.gradient_checkpointing={gc}"],
        )  # fmt: skip

        def mlp(self: Any, *args: Any, gc: str = gc, **kwargs: Any) -> Any:
            calls[gc] += 1
            return real_mlp(self, *args, **kwargs)

        monkeypatch.setattr(LlamaMLP, "forward", mlp)
        runs[gc] = (sft_recipe.train_sft(cfg), read_metrics(tmp_path / gc / "metrics.jsonl"))
        monkeypatch.undo()
    assert calls["true"] == 2 * calls["false"] > 0  # every layer really ran again in backward
    (plain, m0), (ckpt, m1) = runs["false"], runs["true"]
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in m1] == pytest.approx([r[key] for r in m0], rel=1e-6, abs=1e-8)
    w0, w1 = weights(plain), weights(ckpt)
    assert all(torch.allclose(w0[k], w1[k], atol=1e-7) for k in w0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="QLoRA may really run here")
def test_qlora_without_cuda_fails_in_one_line(
    tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["sft", *FAST, f"output_dir={tmp_path / 'q'}", f"model.path={tiny_dir}", "lora.quantize=4bit"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("posttrain: error: lora.quantize: 4bit (QLoRA) needs a CUDA GPU and bitsandbytes")
    assert not (tmp_path / "q").exists()  # failed before any work


def test_lora_errors_name_the_problem(tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rm", *FAST, f"model.path={tiny_dir}", "lora.r=4", f"output_dir={tmp_path / 'rm'}"]) == 2
    assert "lora: posttrain rm trains every weight" in capsys.readouterr().err
    assert main(["sft", *FAST, f"model.path={tiny_dir}", "lora.target_modules=nope", f"output_dir={tmp_path}"]) == 2
    assert "lora.target_modules: " in capsys.readouterr().err
    adapter = tmp_path / "orphan"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "no/such/base"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="base_model_name_or_path: the base model 'no/such/base' is not a local"):
        load_model(adapter)


@pytest.mark.parametrize("backend", ["ray", "vllm"])
@pytest.mark.parametrize("command", ["grpo", "dpo"])
def test_lora_on_an_engine_without_adapters_is_refused_before_any_model_loads(
    tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    backend: str, command: str,
) -> None:  # fmt: skip
    def no_model(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded before the engine check")

    monkeypatch.setattr(launch, "open_stage", no_model)
    argv = [command, f"model.path={tiny_dir}", *LORA, f"engine.backend={backend}", f"output_dir={tmp_path / 'o'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"posttrain: error: engine.backend: the {backend} engine holds a plain model and cannot take "
        "LoRA adapter weights: use engine.backend=torch with lora"
    )
    assert not (tmp_path / "o").exists()
