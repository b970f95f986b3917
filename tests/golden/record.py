"""Re-record the golden traces: ``python -m tests.golden.record [NAME ...]``."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from tests.golden.runs import HERE, RUNS


def record(names: list[str]) -> None:
    for name in names or list(RUNS):
        with tempfile.TemporaryDirectory() as tmp:
            metrics = RUNS[name](Path(tmp))
        (HERE / f"{name}.json").write_text(json.dumps(metrics, indent=1) + "\n")
        print(f"{name}: {len(metrics)} records")


if __name__ == "__main__":
    record(sys.argv[1:])
