"""``posttrain data``: make and clean post-training data.

One module a command, each readable top to bottom:

- ``dedup``: exact (normalised text hash) and near-duplicate (MinHash LSH) removal;
- ``decontaminate``: drop training rows sharing an n-gram with an evaluation row;
- ``prune``: Sharma et al. 2024's line heuristics and document quality score;
- ``synth``: CoT-Self-Instruct (Yu et al. 2025), sharded and resumable, with the
  answer-consistency and RIP filters;
- ``select``: NaturalThoughts (Li et al. 2025) selection of teacher traces.

Rows are read with ``posttrain.tasks.rows`` (so a bad line is the same one-line error
as everywhere else) and written by ``posttrain.datagen.io``: ``kept.jsonl`` (or
``.parquet``), ``removed.jsonl`` with each row's reason, and ``summary.json``.
``posttrain.datagen.backend`` runs the per-row work in this process or on Ray Data.
"""
