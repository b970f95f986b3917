"""Prefill in groups of similar prompt length: the fewest padded tokens, and the same samples as one padded batch."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import torch

import posttrain.rollout.decoders as dec
from posttrain.algorithms.logprobs import token_logprobs
from posttrain.data.batch import collate
from posttrain.models.io import load_model, load_tokenizer
from posttrain.rollout.base import SamplingParams
from posttrain.rollout.decoders import StaticLlamaDecoder, prefill_groups
from posttrain.rollout.torch_engine import TorchEngine


def test_two_long_prompts_and_three_short_ones_are_two_groups() -> None:
    # one group: 5 x 100 + 64 = 564 tokens; {100, 98} and {12, 11, 10}: 2 x 100 + 3 x 12 + 2 x 64 = 364
    assert prefill_groups([10, 100, 98, 12, 11]) == [([1, 2], 100), ([3, 4, 0], 12)]
    assert prefill_groups([50, 49, 48]) == [([0, 1, 2], 50)]  # 3 tokens of padding: not worth a group
    assert prefill_groups([7]) == [([0], 7)]


def test_the_groups_are_the_cheapest_split() -> None:
    def cost(groups: list[tuple[list[int], int]]) -> int:
        return sum(len(rows) * width + dec.PREFILL_GROUP_TOKENS for rows, width in groups)

    rng = random.Random(0)
    for _ in range(30):
        lengths = [rng.randint(1, 200) for _ in range(rng.randint(1, 7))]
        groups = prefill_groups(lengths)
        assert sorted(i for rows, _ in groups for i in rows) == list(range(len(lengths)))
        assert all(width == max(lengths[i] for i in rows) for rows, width in groups)
        ls = sorted(lengths, reverse=True)
        best = min(  # every split of the sorted lengths into neighbours
            sum(
                len(g) * g[0] + dec.PREFILL_GROUP_TOKENS
                for g in (ls[a:b] for a, b in zip((0, *cuts), (*cuts, len(ls))))
            )
            for k in range(len(ls))
            for cuts in itertools.combinations(range(1, len(ls)), k)
        )
        assert cost(groups) == best


@pytest.fixture(scope="module")
def mixed(tiny_dir: Path) -> tuple[TorchEngine, list[list[int]]]:
    engine = TorchEngine(load_model(tiny_dir), load_tokenizer(tiny_dir), batch_size=8)
    texts = ["1+2=?\n", "12+30-5+1+7+8-2+40=?\n", "9=?\n", "7-3+4+11+2=?\n", "3+3+3+3+3+3+3+3+3+3+3=?\n"]
    return engine, [engine.tokenizer(t)["input_ids"] for t in texts]


def test_grouped_prefill_samples_what_one_padded_batch_samples(
    mixed: tuple[TorchEngine, list[list[int]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, ps = mixed
    sp = SamplingParams(temperature=1.0, max_new_tokens=10, seed=5)
    monkeypatch.setattr(dec, "PREFILL_GROUP_TOKENS", 10**6)
    one = engine.generate(ps, sp)
    monkeypatch.setattr(dec, "PREFILL_GROUP_TOKENS", 0)  # every distinct length its own group
    assert len(prefill_groups([len(p) for p in ps])) == len({len(p) for p in ps}) > 2
    grouped = engine.generate(ps, sp)
    assert [c.completion_ids for c in grouped] == [c.completion_ids for c in one]
    batch = collate([c.prompt_ids for c in grouped], [c.completion_ids for c in grouped], engine.pad_id)
    with torch.no_grad():
        full, _ = token_logprobs(engine.model, batch, 1.0)
    for i, c in enumerate(grouped):  # the unwritten first slots of the short rows are masked zeros
        n = len(c.prompt_ids)
        assert torch.allclose(torch.tensor(c.logprobs), full[i, n - 1 : n - 1 + len(c.completion_ids)], atol=1e-4)


def test_grouped_prefill_keeps_each_rows_last_hidden_state(
    mixed: tuple[TorchEngine, list[list[int]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, ps = mixed
    L = max(len(p) for p in ps)
    ids = torch.full((len(ps), L), engine.pad_id)
    attention = torch.zeros((len(ps), L), dtype=torch.long)
    for i, p in enumerate(ps):
        ids[i, L - len(p) :], attention[i, L - len(p) :] = torch.tensor(p), 1
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    out = {}
    for name, cost in (("one", 10**6), ("grouped", 0)):
        monkeypatch.setattr(dec, "PREFILL_GROUP_TOKENS", cost)
        d = StaticLlamaDecoder(engine.model, L + 4, keep_hidden=True)
        with torch.no_grad():
            logits = d.prefill(ids, attention, positions)
        assert d.zeroed == (name == "grouped") and d.hidden is not None
        out[name] = (logits, d.hidden)
    assert torch.allclose(out["one"][0], out["grouped"][0], atol=1e-5)
    assert torch.allclose(out["one"][1], out["grouped"][1], atol=1e-5)
