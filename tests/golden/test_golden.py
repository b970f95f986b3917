"""Golden traces: seeded runs of SFT, GRPO, offline and online DPO and the quickstart's
first GRPO iterations reproduce their recorded metrics (to float32 noise; tests/golden/runs.py)."""

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


def test_the_comparison_forgives_last_bits_only() -> None:
    golden = [{"loss": 1.7345525026321411, "gap": 1.1e-7, "n": 3}]
    assert not mismatches(golden, [{"loss": 1.7345523834228516, "gap": 2.3e-7, "n": 3}])  # another CPU's bits
    assert mismatches(golden, [{"loss": 1.7363, "gap": 1.1e-7, "n": 3}])  # 1e-3 relative: a real change
    assert mismatches(golden, [{"loss": 1.7345525026321411, "gap": 5e-6, "n": 3}])
    assert mismatches(golden, [{"loss": 1.7345525026321411, "gap": 1.1e-7, "n": 4}])  # counts exactly
