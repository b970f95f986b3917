"""Online DivPO with a separate embedding model: the pairs come from its embeddings, and the run trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import posttrain.recipes.online_dpo as online
from posttrain.config import load_config
from posttrain.eval import embedding_diversity as ed
from posttrain.train.metrics import read_metrics
from tests.conftest import FAST
from tests.integration.test_recipes import weights
from tests.integration.test_seed_methods import SHORTER


def test_online_divpo_embeds_with_dpo_divpo_embedding_model(
    tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedding model is a second copy of the tiny model, loaded once; every pool of every
    iteration is embedded by it (the policy itself embeds nothing)."""
    seen: list[Any] = []
    real = ed.embedding_diversity

    def spy(model: Any, tokenizer: Any, pools: list[list[str]], batch_size: int = 16) -> list[list[float]]:
        seen.append(model)
        return real(model, tokenizer, pools, batch_size)

    monkeypatch.setattr(ed, "embedding_diversity", spy)
    cfg = load_config(
        None,
        [*FAST, f"output_dir={tmp_path}", f"model.path={tiny_dir}", "dpo.mode=online", "train.max_steps=2",
         "dpo.pairs=divpo", "dpo.divpo_criterion=embedding", f"dpo.divpo_embedding_model={tiny_dir}",
         "dpo.divpo_split=quantile", "dpo.divpo_threshold=0.5", SHORTER],
    )  # fmt: skip
    final = online.train_online_dpo(cfg)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["pairs"] + r["skipped_tie"] for r in records] == [4, 4]
    assert len(seen) == 2 and seen[0] is seen[1]  # one call per iteration, the same model loaded once
    start, trained = weights(tiny_dir), weights(final)
    embedder = {k: v for k, v in seen[0].state_dict().items() if k in start}
    assert all(torch.equal(embedder[k], start[k]) for k in embedder)  # not the policy: it never trained
    assert any(not torch.equal(trained[k], start[k]) for k in start)
