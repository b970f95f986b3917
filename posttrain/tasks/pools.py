r"""Offline preference pools: scored responses per prompt, turned into DPO pairs by a pair rule.

A pool file holds, one row per prompt::

    {"prompt": "2+2=?", "responses": [{"text": "#4", "score": 1.0}, {"text": "#5", "score": 0.0}, ...]}

(JSONL, Parquet or a datasets directory, read like preference pairs; the prompt may
be a message list). Offline ``posttrain dpo`` reads such a file when its rows carry
``responses`` and builds each pool's pairs with ``dpo.pairs``, the rule online DPO
applies to its sampled pools (``posttrain.algorithms.pairs``):

- ``random``: a random response scored above 0.5 against a random one at or below it;
- ``best_worst``: the top-scored against the bottom-scored (ties at random);
- ``divpo``: DivPO (Lanchantin et al. 2025, "Diverse Preference Optimization",
  Section 3): the most diverse response above the quality threshold against the
  least diverse below it, diversity by ``dpo.divpo_criterion`` over the pool's texts
  (``word_frequency``, ``ngram`` or ``embedding``, the last the mean-pooled hidden
  states of the model ``model.path`` names, the policy as it starts, or of
  ``dpo.divpo_embedding_model``; ``logprob`` needs the policy's sampling logprobs,
  which a file does not hold).

``group`` (every correct x wrong pair, weighted) is refused: offline pairs carry no
weight. Pools whose rule makes no pair (every score equal, or none on one side) are
skipped and counted in one line. The held-out split is chosen per prompt, as for pairs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from posttrain.algorithms.pairs import build_pairs
from posttrain.config import DPOConfig
from posttrain.errors import ConfigError
from posttrain.eval.diversity import ngram_distance, word_frequency_rarity
from posttrain.seeds import derive_seed
from posttrain.tasks.base import Prompt, Split
from posttrain.tasks.preferences import PreferencePair
from posttrain.tasks.rows import (
    RowError,
    Rows,
    load_splits,
    message_list,
    parse_rows,
    read_rows,
    string_field,
    type_name,
)
from posttrain.train.metrics import console

POOL_SHAPE = "{prompt, responses: [{text, score}, ...]}"
OFFLINE_RULES = ("random", "best_worst", "divpo")
Embed = Callable[[list[list[str]]], list[list[float]]]  # pools' texts -> each response's embedding diversity


@dataclass(frozen=True)
class ResponsePool:
    id: str
    prompt: Prompt
    texts: list[str]
    scores: list[float]
    source: str  # "file:line" of the row


def is_pool_file(path: str) -> bool:
    """Whether the first row of ``path`` is a pool (has ``responses``) rather than a pair."""
    rows = read_rows(path)["train"].rows
    return bool(rows) and isinstance(rows[0][1], dict) and "responses" in rows[0][1]


def _parse_pool(row: Any) -> tuple[Prompt, list[str], list[float]]:
    if not isinstance(row, dict):
        raise RowError(None, f"expected a JSON object {POOL_SHAPE}, got {type_name(row)}")
    if "prompt" not in row or "responses" not in row:
        raise RowError("prompt" if "prompt" not in row else "responses", f"a pool row needs {POOL_SHAPE}")
    prompt: Prompt = (
        message_list(row["prompt"], "prompt") if isinstance(row["prompt"], list) else string_field(row, "prompt")
    )
    responses = row["responses"]
    if not isinstance(responses, list) or len(responses) < 2:
        raise RowError("responses", "expected a list of at least two {text, score} objects")
    texts, scores = [], []
    for i, r in enumerate(responses):
        where = f"responses[{i}]"
        if not isinstance(r, dict) or "text" not in r or "score" not in r:
            raise RowError(where, "expected an object {text, score}")
        if not isinstance(r["text"], str):
            raise RowError(f"{where}.text", f"expected a string, got {type_name(r['text'])}")
        s = r["score"]
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise RowError(f"{where}.score", f"expected a finite number, got {s!r}")
        texts.append(r["text"])
        scores.append(float(s))
    return prompt, texts, scores


def pools_of(rows: Rows) -> list[ResponsePool]:
    return [
        ResponsePool(f"{rows.id_prefix}:{line}", prompt, texts, scores, f"{rows.label}:{line}")
        for line, (prompt, texts, scores) in parse_rows(rows, _parse_pool)
    ]


def pool_diversity(criterion: str, pools: list[ResponsePool], embed: Embed | None = None) -> list[list[float]]:
    """Each response's diversity within its pool, by ``dpo.divpo_criterion`` (``posttrain.eval.diversity``).

    ``embedding`` calls ``embed`` on every pool's texts (``posttrain.eval.embedding_diversity``).
    """
    if criterion == "word_frequency":
        return [word_frequency_rarity(p.texts) for p in pools]
    if criterion == "ngram":
        return [ngram_distance(p.texts) for p in pools]
    if criterion == "embedding":
        assert embed is not None, "the embedding criterion needs a model to embed with"
        return embed([p.texts for p in pools])
    raise ConfigError(
        "offline DivPO ranks a pool's texts: use dpo.divpo_criterion=word_frequency, ngram or embedding "
        "(logprob needs the policy's sampling logprobs: dpo.mode=online)",
        field="dpo.divpo_criterion",
    )


def pairs_of_pools(
    pools: list[ResponsePool], d: DPOConfig, seed: int, embed: Embed | None = None
) -> tuple[list[PreferencePair], dict[str, int]]:
    """The pairs ``d.pairs`` picks from each pool, and how many pools each reason skipped."""
    if d.pairs not in OFFLINE_RULES:
        raise ConfigError(
            f"offline pools take dpo.pairs={'|'.join(OFFLINE_RULES)} ({d.pairs} weights its pairs)", field="dpo.pairs"
        )
    diversity = pool_diversity(d.divpo_criterion, pools, embed) if d.pairs == "divpo" else None
    rng = random.Random(derive_seed(seed, 61))
    built = build_pairs(
        d.pairs, [p.scores for p in pools], rng, diversity, d.divpo_split, d.divpo_threshold
    )  # fmt: skip
    out = []
    for i, pair in built.pairs:
        p = pools[i]
        out.append(PreferencePair(f"{p.id}:{pair.chosen}>{pair.rejected}", p.prompt, p.texts[pair.chosen],
                                  p.texts[pair.rejected], p.source))  # fmt: skip
    return out, built.skipped


def load_pool_pairs(
    path: str, eval_path: str | None, d: DPOConfig, seed: int, embed: Embed | None = None, test_fraction: float = 0.1
) -> dict[Split, list[PreferencePair]]:
    """Train and held-out pairs built from the pools of ``path`` (and ``eval_path``), skips said in one line."""
    skipped: dict[str, int] = {}

    def records(rows: Rows) -> list[PreferencePair]:
        pairs, skips = pairs_of_pools(pools_of(rows), d, seed, embed)
        for k, v in skips.items():
            skipped[k] = skipped.get(k, 0) + v
        return pairs

    splits = load_splits(path, eval_path, test_fraction, records, lambda p: p.prompt)
    if any(skipped.values()):
        said = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items() if v)
        console.print(f"dpo: pools without a {d.pairs} pair skipped: {said}", markup=False, highlight=False)
    return splits
