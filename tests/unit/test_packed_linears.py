"""The sampler's linear layers through oneDNN on packed weights (``engine.packed_linears``).

Same values as ``nn.Linear`` up to summation order, packed again exactly when a weight
changes (so a sampler that shares the trainer's module never decodes with stale
weights), and the same tokens and logprobs from the engine as the plain path.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain.models.tiny import char_tokenizer
from posttrain.rollout.base import SamplingParams
from posttrain.rollout.decoders import PackedLinears, packing_supported
from posttrain.rollout.torch_engine import TorchEngine

pytestmark = pytest.mark.skipif(
    not packing_supported(torch.device("cpu"), torch.float32), reason="this torch build has no oneDNN"
)
PROMPTS = ["3+4=?\n", "9-2=?\n", "12+30=?\n", "8-5=?\n"]


@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_equals_the_layer(bias: bool) -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(96, 160, bias=bias)
    x = torch.randn(3, 5, 96)
    with torch.no_grad():
        got, want = PackedLinears()((layer,), x), layer(x)
    assert got.shape == want.shape == (3, 5, 160)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.equal(got, torch.zeros_like(got))


def test_layers_of_one_input_run_as_one_matmul() -> None:
    torch.manual_seed(0)
    q, k, v = torch.nn.Linear(64, 64), torch.nn.Linear(64, 16, bias=False), torch.nn.Linear(64, 16)
    x = torch.randn(2, 3, 64)
    with torch.no_grad():
        got = PackedLinears()((q, k, v), x)
        torch.testing.assert_close(got, torch.cat([q(x), k(x), v(x)], -1), rtol=1e-5, atol=1e-5)


def test_bf16_packed_linear_equals_the_bf16_layer() -> None:
    if not packing_supported(torch.device("cpu"), torch.bfloat16):
        pytest.skip("no bf16 oneDNN on this CPU")
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 80).to(torch.bfloat16)
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(PackedLinears()((layer,), x).float(), layer(x).float(), rtol=2e-2, atol=2e-2)


def test_a_weight_is_packed_again_exactly_when_it_changes() -> None:
    torch.manual_seed(0)
    layer, linears = torch.nn.Linear(32, 48, bias=False), PackedLinears()
    x = torch.randn(2, 32)
    with torch.no_grad():
        linears((layer,), x)
        packed = linears._packed[(id(layer),)][2]
        linears((layer,), x)
        assert linears._packed[(id(layer),)][2] is packed  # unchanged: the same packed copy
        layer.weight.mul_(-2.0)  # in place, as an optimiser step or load_state_dict writes it
        torch.testing.assert_close(linears((layer,), x), layer(x), rtol=1e-5, atol=1e-5)
        assert linears._packed[(id(layer),)][2] is not packed
        layer.weight = torch.nn.Parameter(torch.randn(48, 32))  # replaced outright
        torch.testing.assert_close(linears((layer,), x), layer(x), rtol=1e-5, atol=1e-5)


def test_packing_is_for_cpu_float32_and_bfloat16_only() -> None:
    assert not packing_supported(torch.device("meta"), torch.float32)
    assert not packing_supported(torch.device("cpu"), torch.float16)


def _engines(tiny_dir: Path) -> tuple[torch.nn.Module, TorchEngine, TorchEngine]:
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    tok = char_tokenizer()
    return model, TorchEngine(model, tok), TorchEngine(model, tok, packed_linears=True)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_packed_sampler_gives_the_plain_samplers_tokens(tiny_dir: Path, temperature: float) -> None:
    model, plain, packed = _engines(tiny_dir)
    assert packed.packed and not plain.packed
    prompts = [plain.tokenizer.encode(p) for p in PROMPTS for _ in range(2)]
    sp = SamplingParams(temperature=temperature, max_new_tokens=12, seed=5)
    a, b = plain.generate(prompts, sp), packed.generate(prompts, sp)
    assert [c.completion_ids for c in a] == [c.completion_ids for c in b]
    assert sum(len(c.completion_ids) for c in a) > len(prompts)
    for x, y in zip(a, b):
        torch.testing.assert_close(torch.tensor(y.logprobs), torch.tensor(x.logprobs), rtol=0, atol=1e-5)
    assert packed._linears._packed  # it did run packed


def test_the_packed_sampler_follows_the_trainers_updates(tiny_dir: Path) -> None:
    model, plain, packed = _engines(tiny_dir)
    prompts = [plain.tokenizer.encode(p) for p in PROMPTS]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=10)
    before = [c.completion_ids for c in packed.generate(prompts, greedy)]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for p in model.parameters():  # an "update" large enough to change the greedy answers
        p.grad = torch.randn_like(p)
    opt.step()
    after_plain = [c.completion_ids for c in plain.generate(prompts, greedy)]
    assert after_plain != before
    assert [c.completion_ids for c in packed.generate(prompts, greedy)] == after_plain
