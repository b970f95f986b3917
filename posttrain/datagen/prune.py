"""``posttrain data prune``: text-quality pruning (Sharma, Padthe et al. 2024, arXiv 2405.01582, section 2).

Each non-empty line of a row's text goes through ``F`` heuristic line filters, each an
indicator ``I_i(line)`` (1: the line passes). The line score is their weighted mean and
the document score the token-weighted mean of its line scores (the paper's eqs. 1-2)::

    score_line = sum_i w_i I_i(line) / sum_i w_i
    score_doc  = sum_line tc_line score_line / sum_line tc_line

with ``tc_line`` the line's word count here (the paper counts model tokens). The rows
with the lowest ``datagen.prune.fraction`` of document scores are removed (and any
below ``min_score``).

Weights: ``equal`` (every w_i = 1), or ``perplexity``, the paper's eq. 3: a causal LM
(``prune.model``) scores every line, ``PPL_all`` is its perplexity over all lines and
``PPL_i`` over the lines filter i passes; ``w_i = max(0, (PPL_all - PPL_i) / PPL_all)``,
so a filter whose kept lines the model finds more fluent counts more, and one that does
not help counts 0. (When every weight is 0 the equal weights are used, and the summary
says so.)

The paper takes its 14 filters from common practice without listing them one by one;
these 14 are the usual C4 (Raffel et al. 2020, section 2.2) and Gopher (Rae et al. 2021,
appendix A) rules, applied per line:

==================== ========================================================= ======
filter               a line passes when                                        source
==================== ========================================================= ======
terminal_punct       it ends in . ! ? : " ' ) or a closing quote               C4
min_words            it has at least ``prune.min_words`` words (C4 used 5)     C4
no_javascript        it does not mention "javascript"                          C4
no_lorem_ipsum       it does not contain "lorem ipsum"                         C4
no_curly_brace       it has no "{" (code)                                      C4
no_boilerplate       no "cookie", "privacy policy", "terms of use"             C4
max_word_length      no word is longer than 1000 characters                    C4
not_bullet           it does not start with a bullet (•, -, *, ·)              Gopher
no_ellipsis_end      it does not end in "..." or "…"                           Gopher
alpha_words          >= 80% of its words contain a letter                      Gopher
mean_word_length     its mean word length is in [3, 10] characters             Gopher
no_symbol_heavy      "#" and "..." together are <= 10% of its words            Gopher
upper_fraction       <= 50% of its letters are upper case                      RedPajama-style
digit_fraction       <= 50% of its non-space characters are digits             RedPajama-style
==================== ========================================================= ======

(Gopher's document-level repetition rules are dedup's business: ``posttrain data dedup``.)
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from typing import Any

from posttrain.config import Config
from posttrain.datagen.backend import map_batches
from posttrain.datagen.io import Numbered, Outcome
from posttrain.errors import ConfigError

LineFilter = Callable[[str, int], bool]  # (line, min_words) -> passes

_BULLETS = ("•", "-", "*", "·", "‣", "◦")
_TERMINAL = (".", "!", "?", ":", '"', "'", ")", "”", "’")
_BOILERPLATE = ("cookie", "privacy policy", "terms of use")


def _words(line: str) -> list[str]:
    return line.split()


def _mean_word_length(line: str, _: int) -> bool:
    ws = _words(line)
    return bool(ws) and 3 <= sum(len(w) for w in ws) / len(ws) <= 10


def _alpha_words(line: str, _: int) -> bool:
    ws = _words(line)
    return bool(ws) and sum(any(c.isalpha() for c in w) for w in ws) >= 0.8 * len(ws)


def _symbol_heavy(line: str, _: int) -> bool:
    ws = _words(line)
    symbols = line.count("#") + line.count("...") + line.count("…")
    return bool(ws) and symbols <= 0.1 * len(ws)


def _upper_fraction(line: str, _: int) -> bool:
    letters = [c for c in line if c.isalpha()]
    return not letters or sum(c.isupper() for c in letters) <= 0.5 * len(letters)


def _digit_fraction(line: str, _: int) -> bool:
    chars = [c for c in line if not c.isspace()]
    return not chars or sum(c.isdigit() for c in chars) <= 0.5 * len(chars)


FILTERS: dict[str, LineFilter] = {
    "terminal_punct": lambda line, _: line.rstrip().endswith(_TERMINAL),
    "min_words": lambda line, n: len(_words(line)) >= n,
    "no_javascript": lambda line, _: "javascript" not in line.lower(),
    "no_lorem_ipsum": lambda line, _: "lorem ipsum" not in line.lower(),
    "no_curly_brace": lambda line, _: "{" not in line,
    "no_boilerplate": lambda line, _: not any(b in line.lower() for b in _BOILERPLATE),
    "max_word_length": lambda line, _: all(len(w) <= 1000 for w in _words(line)),
    "not_bullet": lambda line, _: not line.lstrip().startswith(_BULLETS),
    "no_ellipsis_end": lambda line, _: not line.rstrip().endswith(("...", "…")),
    "alpha_words": _alpha_words,
    "mean_word_length": _mean_word_length,
    "no_symbol_heavy": _symbol_heavy,
    "upper_fraction": _upper_fraction,
    "digit_fraction": _digit_fraction,
}
NAMES = tuple(FILTERS)


def lines_of(text: str) -> list[str]:
    return [line for line in re.split(r"\r?\n", text) if line.strip()]


def indicators(texts: list[str], min_words: int) -> list[list[tuple[int, list[int]]]]:
    """Per text, per non-empty line: (word count, one 0/1 per filter in ``NAMES`` order). The per-row map."""
    return [
        [(len(_words(line)), [int(FILTERS[name](line, min_words)) for name in NAMES]) for line in lines_of(text)]
        for text in texts
    ]


def line_score(passes: list[int], weights: list[float]) -> float:
    """Eq. 1: the weighted mean of a line's filter indicators."""
    return sum(w * p for w, p in zip(weights, passes)) / sum(weights)


def document_score(lines: list[tuple[int, list[int]]], weights: list[float]) -> float:
    """Eq. 2: the token-weighted (here word-weighted) mean of the line scores; 0 for a text with no words."""
    total = sum(tc for tc, _ in lines)
    if total == 0:
        return 0.0
    return sum(tc * line_score(p, weights) for tc, p in lines) / total


def perplexity_weights(line_nll: list[tuple[float, int]], passes: list[list[int]]) -> list[float]:
    """Eq. 3: ``w_i = max(0, (PPL_all - PPL_i) / PPL_all)`` from each line's (summed NLL, token count)."""

    def ppl(selected: list[int]) -> float:
        nll = sum(line_nll[j][0] for j in selected)
        count = sum(line_nll[j][1] for j in selected)
        return math.exp(nll / count) if count else math.inf

    everything = ppl(list(range(len(line_nll))))
    out = []
    for i in range(len(NAMES)):
        kept = ppl([j for j, p in enumerate(passes) if p[i]])
        out.append(max(0.0, (everything - kept) / everything) if math.isfinite(kept) else 0.0)
    return out


def line_nlls(model: Any, tokenizer: Any, lines: list[str]) -> list[tuple[float, int]]:
    """(summed next-token NLL, predicted tokens) of each line under a causal LM, bos first when it has one."""
    import torch

    limit = getattr(model.config, "max_position_embeddings", 2048)
    bos = tokenizer.bos_token_id
    out: list[tuple[float, int]] = []
    model.eval()
    with torch.no_grad():
        for line in lines:
            ids = ([bos] if bos is not None else []) + list(tokenizer(line, add_special_tokens=False)["input_ids"])
            ids = ids[:limit]
            if len(ids) < 2:
                out.append((0.0, 0))
                continue
            x = torch.tensor([ids], device=model.device)
            logits = model(input_ids=x).logits[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum")
            out.append((float(nll), len(ids) - 1))
    return out


LineNLL = Callable[[list[str]], list[tuple[float, int]]]  # lines -> (summed NLL, tokens) each


def prune(cfg: Config, rows: Numbered, texts: list[str], line_nll: LineNLL | None = None) -> Outcome:
    """Score every row and remove the lowest ``prune.fraction`` (and those below ``prune.min_score``).

    ``line_nll`` scores lines with ``prune.model`` for ``weights: perplexity`` (the command loads it).
    """
    p = cfg.datagen.prune
    per_doc = map_batches(functools.partial(_make_indicators, p.min_words), texts, cfg.datagen)
    weights = [1.0] * len(NAMES)
    note: dict[str, Any] = {"weights": p.weights}
    if p.weights == "perplexity":
        all_lines = [line for text in texts for line in lines_of(text)]
        passes = [ps for doc in per_doc for _, ps in doc]
        if line_nll is None:
            raise ConfigError(
                "datagen.prune.weights=perplexity needs a model to score lines", field="datagen.prune.model"
            )
        found = perplexity_weights(line_nll(all_lines), passes)
        if sum(found) > 0:
            weights = found
        else:
            note["weights"] = "equal (every perplexity weight was 0)"
    scores = [document_score(doc, weights) for doc in per_doc]
    order = sorted(range(len(rows)), key=lambda i: (scores[i], i))
    cut = set(order[: int(p.fraction * len(rows))])
    outcome = Outcome()
    for i, (line, row) in enumerate(rows):
        s = round(scores[i], 6)
        if i in cut:
            outcome.remove(line, row, "low_quality", score=s)
        elif scores[i] < p.min_score:
            outcome.remove(line, row, "below_min_score", score=s)
        else:
            outcome.kept.append((line, row))
    outcome.extra["settings"] = {**note, "fraction": p.fraction, "min_score": p.min_score,
                                 "filter_weights": dict(zip(NAMES, [round(w, 6) for w in weights]))}  # fmt: skip
    outcome.extra["score_mean"] = round(sum(scores) / len(scores), 6) if scores else None
    return outcome


def _make_indicators(min_words: int) -> Callable[[list[str]], list[Any]]:
    return functools.partial(indicators, min_words=min_words)
