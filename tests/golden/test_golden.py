"""Golden traces: seeded runs of SFT, GRPO, offline and online DPO and the quickstart's
first GRPO iterations reproduce their recorded metrics exactly (tests/golden/runs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.golden.runs import HERE, RUNS, mismatches


@pytest.mark.parametrize("name", list(RUNS))
def test_golden_trace(name: str, tmp_path: Path) -> None:
    golden = json.loads((HERE / f"{name}.json").read_text())
    assert golden, "an empty golden trace proves nothing"
    got = RUNS[name](tmp_path)
    assert not mismatches(golden, got), "\n".join(mismatches(golden, got)[:20])
