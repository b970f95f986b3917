"""The vLLM engine under the rollout contract the torch engine keeps, and GRPO through it.

vLLM is an optional extra that needs a CUDA GPU (``pip install 'posttrain[vllm]'``).
CI has neither, so these tests skip there and say why; they ran on the GPU machine
recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("the vLLM engine needs a CUDA GPU (CI has none)", allow_module_level=True)
pytest.importorskip("vllm", reason="vLLM is an optional extra: pip install 'posttrain[vllm]'")

from posttrain.algorithms.logprobs import token_logprobs  # noqa: E402
from posttrain.config import ArithmeticConfig, TinyModelConfig  # noqa: E402
from posttrain.data.batch import collate, per_token  # noqa: E402
from posttrain.data.tokenize import encode_prompt  # noqa: E402
from posttrain.models.io import load_model, load_tokenizer  # noqa: E402
from posttrain.models.tiny import build_tiny  # noqa: E402
from posttrain.rollout.base import SamplingParams  # noqa: E402
from posttrain.rollout.factory import device_state  # noqa: E402
from posttrain.rollout.vllm_engine import VLLMEngine  # noqa: E402
from posttrain.tasks.arithmetic import ArithmeticTask  # noqa: E402
from tests.conftest import FAST  # noqa: E402

# head_dim 64: a size every vLLM attention backend takes
SIZE = TinyModelConfig(hidden_size=256, num_layers=2, num_heads=4, intermediate_size=512, max_position_embeddings=128)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(SIZE, tmp_path_factory.mktemp("vllm-model"), seed=0)


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Iterator[VLLMEngine]:
    eng = VLLMEngine(model_dir, load_tokenizer(model_dir), gpu_memory_utilization=0.15, enforce_eager=True)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def prompts(model_dir: Path) -> list[list[int]]:
    tok = load_tokenizer(model_dir)
    task = ArithmeticTask(ArithmeticConfig(num_operands=2, digits=1))
    return [encode_prompt(tok, task.prompt(ex)) for ex in task.examples("test", 8, 0)]


def test_vllm_engine_keeps_the_engine_contract(engine: VLLMEngine, prompts: list[list[int]]) -> None:
    sp = SamplingParams(temperature=1.0, max_new_tokens=12, seed=7)
    outs = engine.generate(prompts, sp)
    assert [c.prompt_ids for c in outs] == prompts  # one per prompt, in order
    for c in outs:
        assert len(c.logprobs) == len(c.completion_ids) <= 12
        assert all(lp <= 0 for lp in c.logprobs)
        if c.finish_reason == "stop":
            assert c.completion_ids[-1] in engine.stop_ids  # the stop token is kept, as the torch engine keeps it
        else:
            assert len(c.completion_ids) == 12
    assert [c.completion_ids for c in engine.generate(prompts, sp)] == [c.completion_ids for c in outs]
    same = engine.generate([prompts[0]] * 8, sp)  # G samples of one prompt must differ
    assert len({tuple(c.completion_ids) for c in same}) > 1
    assert engine.generate([], sp) == []


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_vllm_logprobs_match_the_trainers(
    engine: VLLMEngine, model_dir: Path, prompts: list[list[int]], temperature: float
) -> None:
    """The importance ratio's denominator: vLLM's logprobs against a bf16 forward of the same weights."""
    outs = engine.generate(prompts, SamplingParams(temperature=temperature, max_new_tokens=12, seed=1))
    model = load_model(model_dir).to("cuda", torch.bfloat16)
    batch = collate([c.prompt_ids for c in outs], [c.completion_ids for c in outs], engine.stop_ids[0]).to("cuda")
    with torch.no_grad():
        full, _ = token_logprobs(model, batch, temperature)
    sampled = per_token([c.logprobs for c in outs], [len(c.prompt_ids) for c in outs], full.shape[1]).cuda()
    gap = ((full.float() - sampled).abs() * batch.response_mask).sum() / batch.response_mask.sum()
    assert float(gap) < 0.02, float(gap)


def test_sync_weights_changes_what_is_sampled(engine: VLLMEngine, model_dir: Path, prompts: list[list[int]]) -> None:
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
    before = engine.generate(prompts, greedy)
    model = load_model(model_dir).cuda()
    original = {k: v.clone() for k, v in device_state(model).items()}
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    engine.sync_weights(device_state(model))
    changed = engine.generate(prompts, greedy)
    assert [c.completion_ids for c in changed] != [c.completion_ids for c in before]
    engine.sync_weights(original)  # back to the directory's weights: the first output again
    assert [c.completion_ids for c in engine.generate(prompts, greedy)] == [c.completion_ids for c in before]


VLLM_GRPO = ["model.device=cuda", "train.mixed_precision=bf16", "engine.backend=vllm", "engine.enforce_eager=true",
             "engine.gpu_memory_utilization=0.15", "train.max_steps=2", "grpo.drop_uniform_groups=false"]  # fmt: skip


def grpo_in_a_fresh_process(out: Path, model_dir: Path, extra: list[str]) -> list[dict[str, float]]:
    """Two GRPO iterations on vLLM in their own process (one vLLM engine set per process); its metrics records."""
    args = [*FAST, f"model.path={model_dir}", *VLLM_GRPO, *extra, f"output_dir={out}"]
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)}
    run = subprocess.run([sys.executable, "-m", "posttrain", "grpo", *args], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2]
    return records


def test_grpo_with_the_vllm_engine(tmp_path: Path, model_dir: Path) -> None:
    """Two GRPO iterations in a fresh process: on-policy ratio, logged gap."""
    out = tmp_path / "grpo"
    extra = ["grpo.overlong=penalty", "grpo.overlong_reward=-1.0", "optim.lr=1e-3"]
    records = grpo_in_a_fresh_process(out, model_dir, extra)
    first = records[0]
    assert first["logprob_gap"] < 0.05  # bf16 vLLM against the bf16-autocast trainer, same weights
    assert first["ratio"] == pytest.approx(1.0, abs=0.05)
    assert records[1]["gen_tokens_per_s"] > 0
    assert (out / "final" / "model.safetensors").exists()


def test_grpo_with_a_judge_reward_on_its_own_vllm_engine(tmp_path: Path, model_dir: Path) -> None:
    """A vLLM policy and a pointwise judge on a second vLLM engine, one process: two iterations, verdicts counted."""
    judge = (f"{{kind: judge, path: {model_dir}, mode: pointwise, template: short, max_new_tokens: 4, "
             "gpu_memory_utilization: 0.1}")  # fmt: skip
    records = grpo_in_a_fresh_process(tmp_path / "grpo-judge", model_dir, [f"reward.components=[{judge}]"])
    assert all(r["judge/judge_calls"] > 0 for r in records)  # every sample went to the vLLM judge
    assert all(r["judge/parse_failures"] <= r["judge/judge_calls"] for r in records)
