"""``posttrain data dedup``: exact and near-duplicate removal; the first row of each set is kept.

Exact: two rows whose compared text (``datagen.fields``) is the same after lowercasing,
stripping punctuation and collapsing whitespace (``posttrain.datagen.text.words``).
Near: MinHash over word ``shingle_words``-grams with locality-sensitive hashing (Broder
1997; LSH banding as in Leskovec, Rajaraman and Ullman, "Mining of Massive Datasets",
ch. 3), both from the ``datasketch`` library: a row is dropped when the LSH index of the
rows kept so far returns a candidate whose estimated Jaccard similarity is at least
``datagen.dedup.threshold`` (LSH only proposes candidates; the estimate decides).
"""

from __future__ import annotations

import functools
from typing import Any

from posttrain.config import Config
from posttrain.datagen.backend import map_batches
from posttrain.datagen.io import Numbered, Outcome
from posttrain.datagen.text import ngrams, text_hash, words
from posttrain.errors import ConfigError

MINHASH_SEED = 1  # fixed: signatures must be comparable across runs and Ray workers
MINHASH_SCHEME = "affine32"  # datasketch 2.0's default, named so stored hash values read back the same


def require_datasketch() -> Any:
    try:
        import datasketch
    except ImportError as e:
        raise ConfigError(
            "near-duplicate removal needs datasketch: pip install 'posttrain[data]' (or datagen.dedup.near=false)",
            field="datagen.dedup.near",
        ) from e
    return datasketch


def signatures(texts: list[str], num_perm: int, shingle: int, near: bool) -> list[tuple[str, Any]]:
    """(exact hash, MinHash hash values or None) of each text: the per-row map."""
    out: list[tuple[str, Any]] = []
    ds = require_datasketch() if near else None
    for text in texts:
        mh = None
        if ds is not None:
            grams = {" ".join(g).encode() for g in ngrams(words(text), shingle)}
            m = ds.MinHash(num_perm=num_perm, seed=MINHASH_SEED, scheme=MINHASH_SCHEME)
            m.update_batch(sorted(grams))
            mh = m.hashvalues
        out.append((text_hash(text), mh))
    return out


def _make_signer(num_perm: int, shingle: int, near: bool) -> Any:
    return functools.partial(signatures, num_perm=num_perm, shingle=shingle, near=near)


def dedup(cfg: Config, rows: Numbered, texts: list[str]) -> Outcome:
    """Keep the first row of each exact or near-duplicate set; the removed name the line they duplicate."""
    d = cfg.datagen.dedup
    sigs = map_batches(functools.partial(_make_signer, d.num_perm, d.shingle_words, d.near), texts, cfg.datagen)
    outcome = Outcome()
    first_line: dict[str, int] = {}
    lsh = None
    if d.near:
        ds = require_datasketch()
        lsh = ds.MinHashLSH(threshold=d.threshold, num_perm=d.num_perm)
    minhashes: dict[int, Any] = {}
    for (line, row), (digest, values) in zip(rows, sigs):
        if digest in first_line:
            outcome.remove(line, row, "exact_duplicate", duplicate_of_line=first_line[digest])
            continue
        first_line[digest] = line
        if lsh is None:
            outcome.kept.append((line, row))
            continue
        m = ds.MinHash(num_perm=d.num_perm, seed=MINHASH_SEED, hashvalues=values, scheme=MINHASH_SCHEME)
        best = _closest(m, lsh.query(m), minhashes, d.threshold)
        if best is not None:
            outcome.remove(line, row, "near_duplicate", duplicate_of_line=best[0], jaccard=round(best[1], 4))
            continue
        lsh.insert(line, m)
        minhashes[line] = m
        outcome.kept.append((line, row))
    outcome.extra["settings"] = {"near": d.near, "threshold": d.threshold, "num_perm": d.num_perm,
                                 "shingle_words": d.shingle_words}  # fmt: skip
    return outcome


def _closest(m: Any, candidates: list[Any], kept: dict[int, Any], threshold: float) -> tuple[int, float] | None:
    """The earliest candidate at or above ``threshold`` estimated Jaccard, with its estimate."""
    scored = [(int(c), float(m.jaccard(kept[c]))) for c in candidates]
    hits = sorted((line, j) for line, j in scored if j >= threshold)
    return hits[0] if hits else None
