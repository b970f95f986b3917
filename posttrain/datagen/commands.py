"""``posttrain data SUBCOMMAND``'s names, and the three filters' common path: read, filter, write.

The model-loading wiring (synth's engine, prune's perplexity model) is the command's,
``posttrain.recipes.data``.
"""

from __future__ import annotations

from typing import Any

from posttrain.config import Config
from posttrain.datagen.io import read_numbered, texts_of, write_outcome
from posttrain.datagen.prune import LineNLL
from posttrain.datagen.text import field_list

SUBCOMMANDS = {
    "dedup": "exact and near-duplicate (MinHash LSH) removal",
    "decontaminate": "drop training rows sharing an n-gram with an evaluation file's rows",
    "prune": "line-level quality heuristics and a document score (Sharma et al. 2024); lowest scores dropped",
    "synth": "CoT-Self-Instruct: new tasks from seed tasks, filtered by answer consistency or RIP",
    "select": "NaturalThoughts: choose N teacher traces by random, length, difficulty or strategy diversity",
}
FILTERS = ("dedup", "decontaminate", "prune")


def run_filter(name: str, cfg: Config, line_nll: LineNLL | None = None) -> dict[str, Any]:
    """dedup, decontaminate or prune ``datagen.input`` into ``output_dir``; the summary."""
    from posttrain.datagen.decontaminate import decontaminate
    from posttrain.datagen.dedup import dedup
    from posttrain.datagen.prune import prune

    label, rows = read_numbered(cfg.datagen.input, "datagen.input")
    texts = texts_of(label, rows, field_list(cfg.datagen.fields), "datagen.fields")
    if name == "dedup":
        outcome = dedup(cfg, rows, texts)
    elif name == "decontaminate":
        outcome = decontaminate(cfg, rows, texts)
    else:
        outcome = prune(cfg, rows, texts, line_nll)
    return write_outcome(cfg.out, outcome, name, label, cfg.datagen.output_format)
