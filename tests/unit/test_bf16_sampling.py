"""Sampling from a bf16 copy of an fp32 trainer (``engine.dtype=bfloat16``).

The sampler's logprobs agree with the trainer's fp32 recomputation to within bf16
rounding (stated below); the trainer's weights stay fp32 and untouched; the copy
follows the trainer's updates; and GRPO's importance ratio compares the trainer
with itself (``old_logprobs`` from the update's own forward when a batch makes one
optimiser step, recomputed before the steps otherwise), so its first update's ratio is 1.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import posttrain.recipes.grpo as grpo_recipe
from posttrain.algorithms.logprobs import token_logprobs
from posttrain.config import load_config
from posttrain.data.batch import collate
from posttrain.errors import ConfigError
from posttrain.models.tiny import char_tokenizer
from posttrain.rollout.base import SamplingParams
from posttrain.rollout.torch_engine import TorchEngine
from posttrain.train.metrics import read_metrics
from tests.conftest import FAST

# The stated tolerance, per sampled token, on the tiny test model: bf16 keeps 8 mantissa
# bits (weights and activations round at ~4e-3 relative); measured here, the mean gap is
# ~5e-4 nats and the largest ~1.5e-3, a stale copy after the update below ~0.15; fp32 agrees to 1e-6
BF16_MEAN_GAP, BF16_MAX_GAP = 5e-3, 2e-2
PROMPTS = ["3+4=?\n", "9-2=?\n", "1+1=?\n", "8-5=?\n"]


def _gaps(engine: TorchEngine, model: torch.nn.Module) -> torch.Tensor:
    """|sampler logprob - trainer fp32 logprob| of every sampled token."""
    tok = engine.tokenizer
    prompts = [tok.encode(p) for p in PROMPTS for _ in range(2)]
    out = engine.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=12, seed=3))
    batch = collate([c.prompt_ids for c in out], [c.completion_ids for c in out], engine.pad_id)
    with torch.no_grad():
        full, _ = token_logprobs(model, batch)
    gaps = []
    for i, c in enumerate(out):
        p = len(c.prompt_ids)
        mine = full[i, p - 1 : p - 1 + len(c.completion_ids)]
        gaps.append((mine - torch.tensor(c.logprobs)).abs())
    return torch.cat(gaps)


def test_bf16_sampler_logprobs_match_the_fp32_trainer_to_bf16_rounding(tiny_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tok = char_tokenizer()
    fp32 = _gaps(TorchEngine(model, tok, dtype="auto"), model)
    engine = TorchEngine(model, tok, dtype="bfloat16")
    bf16 = _gaps(engine, model)
    assert engine.sampling_model() is not model
    assert next(engine.sampling_model().parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the trainer is untouched
    assert float(fp32.max()) < 1e-4
    assert 0 < float(bf16.mean()) < BF16_MEAN_GAP and float(bf16.max()) < BF16_MAX_GAP


def test_the_bf16_copy_follows_the_trainers_updates(tiny_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    engine = TorchEngine(model, char_tokenizer(), dtype="bfloat16")
    _gaps(engine, model)
    with torch.no_grad():  # an "update": large enough that a stale copy would be far off
        for p in model.parameters():
            p.mul_(1.5)
    assert float(_gaps(engine, model).mean()) < BF16_MEAN_GAP * 2


def test_same_dtype_samples_from_the_model_itself(tiny_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    assert TorchEngine(model, char_tokenizer(), dtype="float32").sampling_model() is model


def bf16_grpo(out: Path, tiny_dir: Path, *extra: str) -> list[dict]:
    cfg = load_config(None, [*FAST, f"output_dir={out}", f"model.path={tiny_dir}", "train.max_steps=2",
                             "engine.dtype=bfloat16", "grpo.drop_uniform_groups=false", "grpo.overlong=penalty",
                             "grpo.overlong_reward=-1.0", "optim.lr=1e-3", *extra])  # fmt: skip
    grpo_recipe.train_grpo(cfg)
    return read_metrics(out / "metrics.jsonl")


@pytest.mark.parametrize("extra", [(), ("grpo.minibatches=2",)], ids=["one step a batch", "two minibatches"])
def test_grpo_with_a_bf16_sampler_recomputes_old_logprobs(tmp_path: Path, tiny_dir: Path, extra: tuple) -> None:
    # one optimiser step a batch: pi_old comes from the update's own forward; two: from a no-grad pass before them
    records = bf16_grpo(tmp_path / "g", tiny_dir, *extra)
    first = records[0]
    assert 0 < first["sampler_logprob_gap"] < BF16_MEAN_GAP  # the sampler's own logprobs were bf16's
    assert first["ratio"] == pytest.approx(1.0, abs=1e-6)  # but the ratio is the trainer's against itself
    assert first["logprob_gap"] == pytest.approx(0.0, abs=1e-6)
    assert all(r["loss"] is not None for r in records)


def test_old_logprobs_from_the_update_equal_the_extra_pass(
    tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = bf16_grpo(tmp_path / "a", tiny_dir)
    init = grpo_recipe.GRPOStep.__init__

    def recomputing(self: grpo_recipe.GRPOStep, cfg: object) -> None:
        init(self, cfg)  # type: ignore[arg-type]
        assert self.old_from_update
        self.old_from_update = False  # the no-grad pass of recompute_old_logprobs instead

    monkeypatch.setattr(grpo_recipe.GRPOStep, "__init__", recomputing)
    b = bf16_grpo(tmp_path / "b", tiny_dir)
    for key in ("loss", "ratio", "sampler_logprob_gap", "reward"):
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], rel=1e-5, abs=1e-7), key


def test_a_sampling_dtype_on_another_engine_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"engine\.dtype: only the torch engine"):
        load_config(None, ["engine.backend=ray", "engine.dtype=bfloat16"])
