"""The report's curriculum view: per-task mix weights, rewards and learnability of a ``data.curriculum: ucb`` run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from posttrain.eval.plots import curriculum_series, curriculum_tasks
from posttrain.eval.report import write_report
from posttrain.train.metrics import read_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WEIGHTS = {"add": [0.5, 0.7, 0.6, 0.8], "short": [0.5, 0.3, 0.4, 0.2]}
REWARDS = {"add": [0.1, 0.2, 0.3, 0.4], "short": [-3.0, math.nan, -2.0, -1.5]}  # short drew no prompt at step 2


def write_metrics(path: Path, ucb: bool) -> Path:
    """A GRPO run's metrics.jsonl over two tasks, as ``TaskMix.observe`` logs them."""
    rows: list[dict[str, Any]] = []
    for i in range(4):
        r: dict[str, Any] = {"stage": "grpo", "step": i + 1, "iteration": i + 1, "loss": 0.1, "reward": 0.2}
        for t in ("add", "short"):
            r[f"task/{t}/weight"] = WEIGHTS[t][i] if ucb else 0.5
            r[f"task/{t}/reward"] = REWARDS[t][i]
            r[f"task/{t}/prompts"] = 0 if math.isnan(REWARDS[t][i]) else 2
            if ucb:
                r[f"task/{t}/learnability"] = 0.1 * (i + 1)
                r[f"task/{t}/ucb"] = math.inf if i == 0 else 1.0 / (i + 1)  # a task not yet seen: +inf
        rows.append(r)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_ucb_run_gets_its_curriculum_plotted_from_metrics_jsonl(tmp_path: Path) -> None:
    metrics = read_metrics(write_metrics(tmp_path / "metrics.jsonl", ucb=True))
    assert curriculum_tasks(metrics) == ["add", "short"]
    series = curriculum_series(metrics)
    assert list(series) == ["mix weight", "mean reward", "mean |advantage|"]
    assert series["mix weight"]["add"] == ([1.0, 2.0, 3.0, 4.0], WEIGHTS["add"])
    assert series["mix weight"]["short"] == ([1.0, 2.0, 3.0, 4.0], WEIGHTS["short"])
    assert series["mean reward"]["short"] == ([1.0, 3.0, 4.0], [-3.0, -2.0, -1.5])  # no NaN point
    text = write_report(tmp_path / "run", metrics, {}).read_text()
    png = tmp_path / "run" / "plots" / "curriculum.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
    assert "### Curriculum" in text and "](plots/curriculum.png)" in text


def test_a_fixed_mix_has_no_curriculum_plot_and_a_stale_one_is_removed(tmp_path: Path) -> None:
    metrics = read_metrics(write_metrics(tmp_path / "metrics.jsonl", ucb=False))
    stale = tmp_path / "run" / "plots" / "curriculum.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(PNG_MAGIC)
    text = write_report(tmp_path / "run", metrics, {}).read_text()
    assert curriculum_tasks(metrics) == [] and not stale.exists() and "Curriculum" not in text
