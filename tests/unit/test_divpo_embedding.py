"""DivPO's embedding criterion: mean-pooled hidden states of a real tiny model, cosine distance within a pool."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from posttrain.config import DPOConfig, load_config
from posttrain.errors import ConfigError
from posttrain.eval.diversity import logprob_rarity
from posttrain.eval.embedding_diversity import cosine_distance_to_others, embedding_diversity, mean_pooled_embeddings
from posttrain.models.io import load_model, load_tokenizer
from posttrain.recipes.online_dpo import divpo_diversity
from posttrain.recipes.pairwise import pool_embedder
from posttrain.records import Completion, ScoredGroups, ScoreReport
from posttrain.tasks.base import Example
from posttrain.tasks.pools import ResponsePool, pairs_of_pools

A, B = "#4 because 2+2=4", "seven minus three"


def test_cosine_distance_by_hand() -> None:
    """(1,0), (1,0), (0,1): distances 0 between the first two, 1 to the third.
    Means over the others: (0 + 1)/2, (0 + 1)/2, (1 + 1)/2; one vector alone: 0."""
    v = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])  # the length does not matter, the direction does
    assert cosine_distance_to_others(v) == pytest.approx([0.5, 0.5, 1.0])
    assert cosine_distance_to_others(v[:1]) == [0.0]


def test_identical_responses_are_at_distance_zero(tiny_dir: Path) -> None:
    """Pool A, A, B: A's two copies embed alike (distance 0), so their diversity is d/2 and B's d,
    d = 1 - cos(e_A, e_B) from each text's own unpadded forward pass."""
    model, tok = load_model(tiny_dir).eval(), load_tokenizer(tiny_dir)

    def alone(text: str) -> torch.Tensor:
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            return model(ids, output_hidden_states=True).hidden_states[-1][0].mean(0)

    vectors = mean_pooled_embeddings(model, tok, [A, A, B])  # one right-padded batch
    assert torch.allclose(vectors[0], alone(A), atol=1e-5) and torch.allclose(vectors[2], alone(B), atol=1e-5)
    assert torch.equal(vectors[0], vectors[1])
    d = 1.0 - float(torch.nn.functional.cosine_similarity(alone(A), alone(B), dim=0))
    assert d > 1e-4
    [got] = embedding_diversity(model, tok, [[A, A, B]])
    assert got == pytest.approx([d / 2, d / 2, d], rel=1e-4)


def test_divpo_chooses_the_response_far_from_its_pool(tiny_dir: Path) -> None:
    """Pool A, B, A, A scored 1, 1, 0, 0: A's diversity is (d + 0 + 0)/3, B's d. The high set {A, B}
    gives B (the farthest); the low set, two copies of A, gives A. Reward alone cannot tell A from B."""
    model, tok = load_model(tiny_dir).eval(), load_tokenizer(tiny_dir)
    pool = ResponsePool("pool:1", "p?", [A, B, A, A], [1.0, 1.0, 0.0, 0.0], "pools.jsonl:1")
    d = DPOConfig(pairs="divpo", divpo_criterion="embedding")
    for seed in range(3):
        pairs, _ = pairs_of_pools([pool], d, seed, lambda pools: embedding_diversity(model, tok, pools))
        assert [(p.chosen, p.rejected) for p in pairs] == [(B, A)]


def test_offline_pools_embed_with_the_starting_policy_or_a_model_of_their_own(tiny_dir: Path) -> None:
    model, tok = load_model(tiny_dir).eval(), load_tokenizer(tiny_dir)
    [want] = embedding_diversity(model, tok, [[A, A, B]])
    base = ["dpo.pairs=divpo", "dpo.divpo_criterion=embedding"]
    for extra in ([f"model.path={tiny_dir}"], [f"dpo.divpo_embedding_model={tiny_dir}"]):
        embed = pool_embedder(load_config(None, [*base, *extra]))
        assert embed is not None and embed([[A, A, B]])[0] == pytest.approx(want)
    assert pool_embedder(load_config(None, ["dpo.pairs=divpo"])) is None  # logprob: nothing to load


def groups_of(texts: list[str], logprobs: list[list[float]]) -> ScoredGroups:
    completions = [Completion([1], [2] * len(lp), lp, "stop", t) for t, lp in zip(texts, logprobs)]
    scores = torch.ones(1, len(texts))
    return ScoredGroups([Example(id="p", prompt="")], completions, scores, ScoreReport([1.0] * len(texts)), 0, 0.0)


def test_the_default_criterion_reads_the_sampler_logprobs_and_embeds_nothing() -> None:
    groups = groups_of([A, A, B], [[-1.0, -3.0], [-0.5], [-2.0, -2.0, -2.0]])

    def never(pools: list[list[str]]) -> list[list[float]]:
        raise AssertionError("the logprob criterion must not embed")

    assert divpo_diversity("logprob", groups, never) == logprob_rarity([[-1.0, -3.0], [-0.5], [-2.0] * 3])
    assert divpo_diversity("logprob", groups) == [2.0, 0.5, 2.0]
    assert divpo_diversity("ngram", groups) == pytest.approx([0.5, 0.5, 1.0])  # A, A share every n-gram, B none
    assert divpo_diversity("embedding", groups, lambda pools: [[0.1, 0.2, 0.3]]) == [0.1, 0.2, 0.3]


def test_an_embedding_model_without_the_embedding_criterion_is_refused() -> None:
    with pytest.raises(ConfigError, match="dpo.divpo_embedding_model"):
        load_config(None, ["dpo.pairs=divpo", "dpo.divpo_criterion=ngram", "dpo.divpo_embedding_model=some/dir"])
