"""The temperature head reaches the sampler: forced picks equal fixed temperatures, picks are recorded, saved and loaded."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from posttrain.algorithms.lpo import choice_batch
from posttrain.errors import ModelError, RolloutError
from posttrain.models.io import load_model, load_tokenizer
from posttrain.models.temperature_head import (
    HEAD_SETTINGS,
    HEAD_WEIGHTS,
    TemperatureHead,
    load_head,
    model_hidden_size,
    new_head,
    save_head,
)
from posttrain.rollout.base import SamplingParams
from posttrain.rollout.torch_engine import TorchEngine, _sample_rows

TEMPS = [0.0, 0.4, 0.8, 1.2]


@pytest.fixture(scope="module")
def engine(tiny_dir: Path) -> TorchEngine:
    return TorchEngine(load_model(tiny_dir), load_tokenizer(tiny_dir), batch_size=3)


def prompts(engine: TorchEngine) -> list[list[int]]:
    texts = ["1+2=?\n", "7-3+4=?\n", "not in 3,4?\n", "12+30-5+1=?\n"]  # different lengths; 4 rows > batch 3
    return [engine.tokenizer(t)["input_ids"] for t in texts]


def forced(engine: TorchEngine, level: str, pick: int) -> TemperatureHead:
    """A head whose output bias makes temperature ``pick`` certain (its softmax is 1 there in float32)."""
    head = new_head(TEMPS, level, model_hidden_size(engine.model), width=8)  # type: ignore[arg-type]
    with torch.no_grad():
        head.out.bias.fill_(-50.0)
        head.out.bias[pick] = 50.0
    return head


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("level", ["example", "token"])
def test_forced_temperatures_equal_fixed_ones(engine: TorchEngine, level: str, fast: bool) -> None:
    """Picking 0 is the greedy output; picking 1.2 draws exactly what T=1.2 draws with the same seed.

    The head draws its picks with a generator of its own, so the tokens' random stream
    is the fixed-temperature one; logprobs are the same too (softmax(logits / T)).
    Both the Llama fast path and the generic decoder carry the hidden state.
    """
    e = TorchEngine(engine.model, engine.tokenizer, batch_size=3, fast=fast)
    ps = prompts(e)
    for pick, temperature in ((0, 0.0), (3, 1.2)):
        e.head = forced(e, level, pick)
        ours = e.generate(ps, SamplingParams(temperature=0.7, max_new_tokens=10, seed=5, adaptive="sample"))
        fixed = e.generate(ps, SamplingParams(temperature=temperature, max_new_tokens=10, seed=5))
        assert [c.completion_ids for c in ours] == [c.completion_ids for c in fixed]
        assert [c.logprobs for c in ours] == [c.logprobs for c in fixed]
        for c in ours:  # per token: one pick per completion token; per example: one
            assert c.temperature_choices == [pick] * (len(c.completion_ids) if level == "token" else 1)
    assert all(c.temperature_choices is None for c in fixed)


def test_rows_sample_at_their_own_temperature() -> None:
    """Per-row temperatures: a row at 0 is the argmax, and each row's logprob is under its own softmax(logits / T)."""
    torch.manual_seed(0)
    logits = torch.randn(3, 11)
    temps = torch.tensor([0.0, 0.5, 2.0])
    gen = torch.Generator().manual_seed(1)
    token, logprob = _sample_rows(logits, temps, SamplingParams(), gen)
    assert int(token[0]) == int(logits[0].argmax())
    for i, t in enumerate([1.0, 0.5, 2.0]):  # temperature 0's logprob is under T=1, as the fixed sampler's
        assert math.isclose(float(logprob[i]), float((logits[i] / t).log_softmax(-1)[token[i]]), rel_tol=1e-6)


def test_adaptive_sampling_without_a_head_is_refused(engine: TorchEngine) -> None:
    bare = TorchEngine(engine.model, engine.tokenizer)
    with pytest.raises(RolloutError, match="temperature head"):
        bare.generate(prompts(engine), SamplingParams(max_new_tokens=4, adaptive="argmax"))


def test_recomputed_hidden_states_give_the_recorded_picks(engine: TorchEngine) -> None:
    """A random per-token head, argmax picks: the full forward's hidden states at the positions
    ``choice_batch`` reads give back every recorded pick (off by one position, they would not)."""
    head = new_head(TEMPS, "token", model_hidden_size(engine.model), width=0)
    with torch.no_grad():
        head.out.weight.copy_(3 * torch.randn(head.out.weight.shape, generator=torch.Generator().manual_seed(3)))
    e = TorchEngine(engine.model, engine.tokenizer, batch_size=3, head=head)
    outs = e.generate(prompts(e), SamplingParams(max_new_tokens=12, seed=0, adaptive="argmax"))
    assert len({k for c in outs for k in c.temperature_choices or []}) > 1  # the test means something
    batch = choice_batch(e.model, outs, "token", e.pad_id)
    again = head(batch.hidden).argmax(-1)
    assert torch.equal(again * batch.mask.long(), batch.choices)


def test_save_load_round_trip(tmp_path: Path) -> None:
    head = new_head(TEMPS, "token", 32, width=16, seed=1)
    with torch.no_grad():
        torch.nn.init.normal_(head.out.weight)
    save_head(head, tmp_path)
    assert (tmp_path / HEAD_WEIGHTS).is_file()
    assert json.loads((tmp_path / HEAD_SETTINGS).read_text())["temperatures"] == TEMPS
    loaded = load_head(tmp_path)
    assert loaded is not None and loaded.settings == head.settings
    x = torch.randn(5, 32)
    assert torch.equal(loaded(x), head(x))
    assert load_head(tmp_path / "elsewhere") is None  # no head saved there


def test_a_broken_settings_file_is_one_line(tmp_path: Path) -> None:
    save_head(new_head(TEMPS, "example", 32), tmp_path)
    (tmp_path / HEAD_SETTINGS).write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_head(tmp_path)
    (tmp_path / HEAD_SETTINGS).write_text(json.dumps({"temperatures": TEMPS, "level": "example", "hidden_size": 16}))
    with pytest.raises(ModelError, match="do not fit"):  # weights of a head on a hidden size of 32
        load_head(tmp_path)


def test_a_fresh_head_is_uniform() -> None:
    head = new_head(TEMPS, "example", 32)
    lp = head.log_probs(torch.randn(4, 32))
    assert torch.allclose(lp, torch.full_like(lp, -math.log(len(TEMPS))))
