"""Overlapped rollouts (``rollout.max_staleness``, posttrain.rollout.overlap).

Staleness 0 is the synchronous loop and reproduces the golden GRPO trace exactly;
staleness 1 samples iteration i + 1 from version i while iteration i trains, the
same seeded run twice gives the same numbers, and its first iteration (sampled
before any update) is the synchronous run's first iteration.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from posttrain.config import load_config
from posttrain.errors import ConfigError
from posttrain.models.tiny import build_tiny
from posttrain.records import ScoredGroups, ScoreReport
from posttrain.rollout.overlap import Rollouts, fresh
from tests.conftest import FAST, TINY
from tests.golden.runs import GRPO, HERE, _cli, _metrics, mismatches


def _groups(version: int) -> ScoredGroups:
    return ScoredGroups([], [], torch.zeros(0, 2), ScoreReport([]), version, 0.0)


def test_fresh_is_the_staleness_bound() -> None:
    assert fresh(5, 5, 0) and not fresh(5, 4, 0)
    assert fresh(5, 4, 1) and not fresh(5, 3, 1)


def test_rollouts_sample_on_another_thread_and_drop_stale_batches() -> None:
    rollouts = Rollouts(1)
    names: list[str] = []

    def sample(version: int) -> ScoredGroups:
        names.append(threading.current_thread().name)
        return _groups(version)

    try:
        assert rollouts.take(0, 0) is None  # nothing in flight: the loop samples itself
        rollouts.submit(1, lambda: sample(0))
        got = rollouts.take(1, 1)
        assert got is not None and got.policy_version == 0 and names[0].startswith("rollout")
        rollouts.submit(2, lambda: sample(0))  # two versions behind at iteration 2: resampled
        assert rollouts.take(2, 2) is None and rollouts.resampled == 1
        rollouts.submit(3, lambda: sample(2))  # another iteration's batch is never used
        assert rollouts.take(4, 4) is None and rollouts.resampled == 2
    finally:
        rollouts.close()
    sync = Rollouts(0)
    sync.submit(1, lambda: sample(0))  # staleness 0: nothing runs ahead
    assert not sync.overlapped and sync.take(1, 1) is None and len(names) == 3


def test_staleness_0_reproduces_the_golden_grpo_trace(tmp_path: Path) -> None:
    golden = json.loads((HERE / "grpo.json").read_text())
    got = _grpo(tmp_path, "out", 0)
    assert not mismatches(golden, got), "\n".join(mismatches(golden, got)[:20])


def _grpo(tmp: Path, name: str, staleness: int) -> list[dict[str, Any]]:
    """The golden GRPO run (tests/golden/runs.py) with ``rollout.max_staleness`` set."""
    tiny = build_tiny(TINY, tmp / "tiny", seed=0)
    _cli("grpo", *FAST, f"model.path={tiny}", f"output_dir={tmp / name}", *GRPO, f"rollout.max_staleness={staleness}")
    return _metrics(tmp / name)


def test_staleness_1_overlaps_one_version_behind_and_is_reproducible(tmp_path: Path) -> None:
    golden = json.loads((HERE / "grpo.json").read_text())
    a = _grpo(tmp_path, "a", 1)
    b = _grpo(tmp_path, "b", 1)
    assert a == b  # seeds come from the iteration index, the producer samples a copy no update touches
    its = [r["iteration"] for r in a]
    first = [r for r in a if r["iteration"] == 1]
    assert not mismatches([r for r in golden if r["iteration"] == 1], first)
    for r in a:  # iteration i + 1 was sampled by version i, while iteration i trained
        assert r["policy_version"] == max(r["iteration"] - 2, 0)
        assert r["staleness"] == (1 if r["iteration"] > 1 else 0) and r["resampled"] == 0
    later = [r for r in a if r["iteration"] > 1]
    assert later and sorted(set(its)) == [1, 2, 3, 4]
    assert mismatches(golden, a)  # iterations 2-4 trained on batches one version old: other numbers


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("rollout.max_staleness=-1", "must be >= 0"),
        ("rollout.sync_every=2", "needs rollout.sync_every=1"),
        ("engine.dtype=bfloat16", "engine.dtype=bfloat16"),
    ],
)
def test_bad_staleness_settings_name_the_field(override: str, needle: str, tmp_path: Path) -> None:
    extra = [] if override.startswith("rollout.max_staleness") else ["rollout.max_staleness=1"]
    with pytest.raises(ConfigError, match="rollout.max_staleness") as err:
        load_config(None, [override, *extra], stage="grpo")
    assert needle in str(err.value)


@pytest.mark.slow  # a local Ray instance and its worker start: tens of seconds on 2 cores
def test_on_a_ray_worker_the_overlapped_run_matches_the_in_process_one(tmp_path: Path) -> None:
    """The producer's generate call runs on the worker while the trainer trains; the sync waits for it."""
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'posttrain[ray]'")
    here = _grpo(tmp_path, "t", 1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tiny = tmp_path / "tiny"
        _cli("grpo", *FAST, f"model.path={tiny}", f"output_dir={tmp_path / 'r'}", *GRPO, "rollout.max_staleness=1",
             "engine.backend=ray", "engine.workers=1")  # fmt: skip
    finally:
        ray.shutdown()
    there = _metrics(tmp_path / "r")
    assert [r["policy_version"] for r in there] == [r["policy_version"] for r in here]
    assert [r["staleness"] for r in there] == [r["staleness"] for r in here]
    assert [r["completion_len"] for r in there] == [r["completion_len"] for r in here]
    assert [r["loss"] is None for r in there] == [r["loss"] is None for r in here]  # the same groups dropped
    losses = [(a["loss"], b["loss"]) for a, b in zip(there, here) if a["loss"] is not None]
    assert losses and [a for a, _ in losses] == pytest.approx([b for _, b in losses], rel=1e-4)
