"""``teacher.backend=vllm``: the teacher's logprobs of the sampled tokens from vLLM's prompt logprobs.

vLLM is an optional extra that needs a CUDA GPU (``pip install 'posttrain[vllm]'``).
CI has neither, so these tests skip there and say why. What runs anywhere (how the
per-sequence logprobs land in a packed batch, the refusals) is tests/unit/test_teacher_backends.py.
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
    pytest.skip("the vLLM teacher needs a CUDA GPU (CI has none)", allow_module_level=True)
pytest.importorskip("vllm", reason="vLLM is an optional extra: pip install 'posttrain[vllm]'")

from posttrain.config import TinyModelConfig  # noqa: E402
from posttrain.data.batch import collate, pack  # noqa: E402
from posttrain.models.io import load_model, load_tokenizer  # noqa: E402
from posttrain.models.tiny import build_tiny  # noqa: E402
from posttrain.train.teacher import LocalTeacher  # noqa: E402
from posttrain.train.vllm_teacher import VLLMTeacher  # noqa: E402
from tests.conftest import FAST  # noqa: E402

# head_dim 64: a size every vLLM attention backend takes
SIZE = TinyModelConfig(hidden_size=256, num_layers=2, num_heads=4, intermediate_size=512, max_position_embeddings=128)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(SIZE, tmp_path_factory.mktemp("vllm-teacher"), seed=0)


@pytest.fixture(scope="module")
def teacher(model_dir: Path) -> Iterator[VLLMTeacher]:
    t = VLLMTeacher(model_dir, load_tokenizer(model_dir), gpu_memory_utilization=0.15, enforce_eager=True)
    yield t
    t.close()


def test_vllm_prompt_logprobs_are_the_local_teachers(teacher: VLLMTeacher, model_dir: Path) -> None:
    """bf16 vLLM against a bf16 forward of the same weights, right-padded and packed."""
    tok = load_tokenizer(model_dir)
    prompts = [list(tok(t)["input_ids"]) for t in ("1+2=?\n", "7-3+4=?\n", "9=?\n", "12+30-5+1=?\n")]
    completions = [[30, 31, 32], [33], [34, 35, 36, 37, 38], [39, 40]]
    local = LocalTeacher(load_model(model_dir).to("cuda", torch.bfloat16))
    batch = collate(prompts, completions, int(tok.pad_token_id)).to(torch.device("cuda"))  # type: ignore[arg-type]
    for b in (batch, pack(batch.to(torch.device("cpu"))).to(torch.device("cuda"))):
        mask = b.response_mask.bool()
        got, want = teacher.logprobs(b, 1.0), local.logprobs(b, 1.0).float()
        assert got.device == b.input_ids.device and got.shape == want.shape
        gap = (got[mask] - want[mask]).abs().mean()
        assert float(gap) < 0.02, float(gap)


def test_distill_sampled_and_kdrl_with_the_vllm_teacher(tmp_path: Path, model_dir: Path) -> None:
    """Two iterations of each in a fresh process (one vLLM per process): the teacher's logprobs are logged."""
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)}
    common = [*FAST, f"model.path={model_dir}", f"teacher.path={model_dir}", "teacher.backend=vllm",
              "teacher.dtype=bfloat16", "teacher.gpu_memory_utilization=0.15", "engine.enforce_eager=true", "model.device=cuda",
              "train.max_steps=2", "grpo.drop_uniform_groups=false", "grpo.overlong=none"]  # fmt: skip
    for command, extra, key in (("distill", ["distill.loss=sampled"], "teacher_logprob"),
                                ("grpo", ["grpo.kd_coef=0.5"], "kd")):  # fmt: skip
        out = tmp_path / command
        run = subprocess.run([sys.executable, "-m", "posttrain", command, *common, *extra, f"output_dir={out}"],
                             env=env, capture_output=True, text=True)  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        records = [r for r in records if r.get("stage") == command]
        assert [r["iteration"] for r in records] == [1, 2]
        assert all(r[key] == r[key] for r in records)  # finite numbers, not NaN
    # the student is its own teacher here: the sampled log-ratio is near 0 at the first iteration
    lines = (tmp_path / "distill" / "metrics.jsonl").read_text().splitlines()
    first = [r for r in map(json.loads, lines) if r.get("stage") == "distill"][0]
    assert abs(first["distill"]) < 0.05, first
