"""The batched KV-cache sampler against a full forward pass, and its sampling controls."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from posttrain.algorithms.logprobs import token_logprobs
from posttrain.data.batch import collate
from posttrain.models.io import load_model, load_tokenizer
from posttrain.rollout.base import SamplingParams
from posttrain.rollout.torch_engine import TorchEngine, _filter_logits

# the generic path must name the cache as the installed transformers does (`cache` from 5.24)
pytestmark = pytest.mark.filterwarnings("error:`past_key_values` is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def engine(tiny_dir: Path) -> TorchEngine:
    return TorchEngine(load_model(tiny_dir), load_tokenizer(tiny_dir), batch_size=3)


def prompts(engine: TorchEngine) -> list[list[int]]:
    texts = ["1+2=?\n", "7-3+4=?\n", "9=?\n", "12+30-5+1=?\n"]  # different lengths: left padding
    return [engine.tokenizer(t)["input_ids"] for t in texts]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logprobs_equal_full_forward(engine: TorchEngine, temperature: float) -> None:
    ps = prompts(engine)
    outs = engine.generate(ps, SamplingParams(temperature=temperature, max_new_tokens=12, seed=3))
    batch = collate([c.prompt_ids for c in outs], [c.completion_ids for c in outs], engine.pad_id)
    with torch.no_grad():
        full, _ = token_logprobs(engine.model, batch, temperature)
    for i, c in enumerate(outs):
        p = len(c.prompt_ids)
        expected = full[i, p - 1 : p - 1 + len(c.completion_ids)]
        assert torch.allclose(torch.tensor(c.logprobs), expected, atol=1e-4), i


def test_seeded_sampling_is_reproducible_and_batch_independent(engine: TorchEngine) -> None:
    ps = prompts(engine)
    sp = SamplingParams(temperature=1.0, max_new_tokens=10, seed=11)
    a = engine.generate(ps, sp)
    b = engine.generate(ps, sp)
    assert [c.completion_ids for c in a] == [c.completion_ids for c in b]
    other = engine.generate(ps, SamplingParams(temperature=1.0, max_new_tokens=10, seed=12))
    assert [c.completion_ids for c in a] != [c.completion_ids for c in other]


def test_greedy_equals_top_k_one(engine: TorchEngine) -> None:
    ps = prompts(engine)
    greedy = engine.generate(ps, SamplingParams(temperature=0.0, max_new_tokens=8))
    top1 = engine.generate(ps, SamplingParams(temperature=1.0, top_k=1, max_new_tokens=8, seed=5))
    assert [c.completion_ids for c in greedy] == [c.completion_ids for c in top1]


def test_finish_reasons_and_lengths(engine: TorchEngine) -> None:
    outs = engine.generate(prompts(engine), SamplingParams(temperature=1.0, max_new_tokens=5, seed=0))
    for c in outs:
        assert len(c.completion_ids) == len(c.logprobs) <= 5
        if c.finish_reason == "stop":
            assert c.completion_ids[-1] == engine.eos_id
        else:
            assert len(c.completion_ids) == 5 and engine.eos_id not in c.completion_ids


def test_stop_token_ends_the_completion(engine: TorchEngine) -> None:
    """Force eos by making it the only allowed token: one token, reason 'stop'."""
    eng = TorchEngine(engine.model, engine.tokenizer)
    with torch.no_grad():
        bias = torch.full((engine.model.config.vocab_size,), -1e4)
        bias[engine.eos_id] = 0.0
        head = engine.model.get_output_embeddings()
        original = head.bias
        head.bias = torch.nn.Parameter(bias)
        try:
            out = eng.generate(prompts(engine)[:2], SamplingParams(max_new_tokens=6, seed=0))
        finally:
            head.bias = original
    assert all(c.finish_reason == "stop" and c.completion_ids == [engine.eos_id] for c in out)


def test_top_k_and_top_p_filters() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(_filter_logits(logits, 2, 1.0)).tolist() == [[False, False, True, True]]
    # nucleus 0.7: 0.5 alone is below 0.7, 0.5 + 0.3 reaches it; the rest is dropped
    assert torch.isinf(_filter_logits(logits, 0, 0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(_filter_logits(logits, 0, 0.4)).tolist() == [[False, True, True, True]]


def test_inverse_cdf_draws_follow_the_probabilities_and_never_a_masked_token() -> None:
    from posttrain.errors import RolloutError
    from posttrain.rollout.torch_engine import _draw

    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    n = 20000
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([_draw(probs, gen) for _ in range(n)])  # (n, 2)
    freq = torch.bincount(draws[:, 0], minlength=5).double() / n
    # 4.5 standard errors of a frequency near 0.5 at n = 20,000 is 0.016
    assert torch.allclose(freq, probs[0].double(), atol=0.016) and freq[1] == 0 and freq[4] == 0
    assert bool((draws[:, 1] == 4).all())  # the one token of mass 1, also when it is the last
    # unnormalised rows (a top-p mask before the softmax) draw the same way: the uniform is scaled by the row total
    again = _draw(probs * 3, torch.Generator().manual_seed(0))
    assert again.tolist() == _draw(probs, torch.Generator().manual_seed(0)).tolist()
    with pytest.raises(RolloutError, match="not finite"):
        _draw(torch.tensor([[0.5, float("nan")]]), gen)


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_fast_decode_matches_the_plain_path(engine: TorchEngine, temperature: float) -> None:
    assert engine.fast  # the tiny model is a Llama: the static-cache path is the default
    plain = TorchEngine(engine.model, engine.tokenizer, batch_size=3, fast=False)
    sp = SamplingParams(temperature=temperature, max_new_tokens=12, seed=4)
    a, b = engine.generate(prompts(engine), sp), plain.generate(prompts(engine), sp)
    assert [c.completion_ids for c in a] == [c.completion_ids for c in b]
    for x, y in zip(a, b):
        assert torch.allclose(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-5)


@pytest.mark.parametrize("fast", [True, False])
def test_dropping_finished_rows_changes_no_greedy_output(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    """Rows that stop leave the batch (their cache rows too); the others decode exactly as before."""
    import posttrain.rollout.torch_engine as te

    model, tok = load_model(tiny_dir), load_tokenizer(tiny_dir)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the untrained model repeats one token; large random weights vary it per row
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    texts = [f"{a}+{b}=?\n" for a in range(1, 9) for b in (3, 47)]
    ps = [tok(t)["input_ids"] for t in texts]
    plain = TorchEngine(model, tok, batch_size=16, fast=fast)
    sp = SamplingParams(temperature=0.0, max_new_tokens=16)
    monkeypatch.setattr(te, "COMPACT_AT", 0.0)  # never drop a row
    # a stop token at which rows finish at different steps (the untrained model's eos would end them all at once)
    plain.stop_ids = set()
    free = plain.generate(ps, sp)
    for candidate in sorted({t for c in free for t in c.completion_ids[1:]}):
        firsts = {c.completion_ids.index(candidate) if candidate in c.completion_ids else 99 for c in free}
        if len(firsts) >= 3:
            break
    plain.stop_ids = {candidate}
    keep_all = plain.generate(ps, sp)
    lengths = [len(c.completion_ids) for c in keep_all]
    assert len(set(lengths)) >= 3 and any(c.finish_reason == "stop" for c in keep_all)
    selects = []
    decoder = te.StaticLlamaDecoder if fast else te.HFDecoder
    original = decoder.select
    monkeypatch.setattr(decoder, "select", lambda self, rows: (selects.append(len(rows)), original(self, rows)))
    monkeypatch.setattr(te, "COMPACT_AT", 0.75)
    dropped = plain.generate(ps, sp)
    assert selects  # the batch really shrank
    assert [c.completion_ids for c in dropped] == [c.completion_ids for c in keep_all]
    assert [c.finish_reason for c in dropped] == [c.finish_reason for c in keep_all]
    for a, b in zip(dropped, keep_all):
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5)


@pytest.mark.parametrize("fast", [True, False])
def test_a_repeated_prompt_is_prefilled_once_and_each_copy_samples_on_its_own(
    engine: TorchEngine, monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    import posttrain.rollout.torch_engine as te

    a, b, c = prompts(engine)[:3]
    ps = [a, b, a, a, c, b]  # GRPO's layout is each prompt G times in a row; any order is deduplicated
    eng = TorchEngine(engine.model, engine.tokenizer, batch_size=8, fast=fast)
    decoder = te.StaticLlamaDecoder if fast else te.HFDecoder
    prefilled: list[int] = []
    original = decoder.prefill
    monkeypatch.setattr(
        decoder, "prefill", lambda self, ids, *r: (prefilled.append(len(ids)), original(self, ids, *r))[1]
    )
    outs = eng.generate(ps, SamplingParams(temperature=1.0, max_new_tokens=12, seed=3))
    assert prefilled == [3]
    batch = collate([o.prompt_ids for o in outs], [o.completion_ids for o in outs], eng.pad_id)
    with torch.no_grad():
        full, _ = token_logprobs(eng.model, batch, 1.0)
    for i, o in enumerate(outs):  # every copy's cache is its prompt's: logprobs of a full forward pass
        assert o.prompt_ids == ps[i]
        n = len(o.prompt_ids)
        assert torch.allclose(torch.tensor(o.logprobs), full[i, n - 1 : n - 1 + len(o.completion_ids)], atol=1e-4)
    assert len({tuple(outs[i].completion_ids) for i in (0, 2, 3)}) > 1  # the copies draw their own tokens
    greedy = eng.generate(ps, SamplingParams(temperature=0.0, max_new_tokens=8))
    alone = eng.generate([a, b, c], SamplingParams(temperature=0.0, max_new_tokens=8))
    by_prompt = {tuple(o.prompt_ids): o.completion_ids for o in alone}
    assert [o.completion_ids for o in greedy] == [by_prompt[tuple(p)] for p in ps]


def test_stop_tokens_are_the_tokenizers_eos_and_the_generation_configs() -> None:
    from transformers import GenerationConfig

    from posttrain.rollout.base import stop_token_ids

    assert stop_token_ids(2, None) == {2}
    assert stop_token_ids(2, GenerationConfig(eos_token_id=7)) == {2, 7}
    assert stop_token_ids(2, GenerationConfig(eos_token_id=[7, 9, 2])) == {2, 7, 9}  # chat models list several
    assert stop_token_ids(None, GenerationConfig(eos_token_id=[5])) == {5}
