"""The run report: its table holds the numbers given, its plots are real PNGs, missing data is said."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from posttrain.eval.plots import plot_pass_at_k
from posttrain.eval.report import format_summary_table, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def metrics() -> list[dict[str, Any]]:
    sft = [{"stage": "sft", "step": s, "loss": 2.0 - 0.25 * s, "lr": 1e-3, "tokens_per_s": 5000.0} for s in range(1, 5)]
    grpo = [
        {"stage": "grpo", "step": 1, "loss": 0.02, "reward": 0.25, "kl": 0.0, "clip_frac": 0.0},
        {"stage": "grpo", "step": 2, "loss": None, "reward": None, "kl": 0.01, "clip_frac": 0.0},
        {"stage": "grpo", "step": 3, "loss": 0.01, "reward": 0.625, "kl": 0.02, "clip_frac": 0.1},
    ]
    return sft + grpo


def results() -> dict[str, dict[str, Any]]:
    return {
        "sft": {
            "pass_at_k": {"1": 0.3, "2": 0.45, "4": 0.6, "8": 0.7},
            "pass_at_k_ci": {"1": [0.25, 0.35], "2": [0.4, 0.5], "4": [0.55, 0.65], "8": [0.65, 0.75]},
            "maj_at_k": {"1": 0.3, "2": 0.33, "4": 0.41, "8": 0.44},
            "greedy_accuracy": 0.36,
            "mean_completion_tokens": 42.5,
            "heldout_nll": 1.234,
            "num_problems": 50,
            "samples_per_problem": 8,
        },
        "grpo": {
            "pass_at_k": {1: 0.45, 2: 0.55, 4: 0.62, 8: 0.68},
            "maj_at_k": {1: 0.45, 2: 0.47, 4: 0.52, 8: 0.55},
            "greedy_accuracy": 0.5,
            "mean_completion_tokens": 30.0,
            "heldout_nll": None,
            "num_problems": 50,
            "samples_per_problem": 8,
        },
    }


def row(table: str, name: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(f"| {name} |"))


def test_summary_table_holds_the_numbers() -> None:
    table = format_summary_table(results())
    header = table.splitlines()[0]
    assert "pass@8" in header and "maj@8" in header
    sft, grpo = row(table, "sft"), row(table, "grpo")
    for value in ["0.300 [0.250, 0.350]", "0.700", "0.440", "0.360", "1.234", "42.5", "50 × 8"]:
        assert value in sft
    for value in ["0.450", "0.680", "0.550", "0.500", "30.0", "—"]:
        assert value in grpo


def test_summary_table_names_k_when_checkpoints_disagree() -> None:
    r = results()
    r["grpo"]["pass_at_k"] = {"1": 0.45, "2": 0.55}
    table = format_summary_table(r)
    assert "pass@max k" in table.splitlines()[0]
    assert "0.700 (k=8)" in row(table, "sft")
    assert "0.550 (k=2)" in row(table, "grpo")


def test_write_report(tmp_path: Path) -> None:
    path = write_report(tmp_path, metrics(), results(), title="tiny run")
    assert path == tmp_path / "report.md"
    text = path.read_text()
    assert text.startswith("# tiny run")
    assert format_summary_table(results()) in text
    assert "unbiased estimator" in text and "ties are split" in text
    assert "sft → grpo: +15.0 points" in text
    # per-stage summary: steps, last step, first and last loss (None skipped), last reward
    assert "| sft | 4 | 4 | 1.750 | 1.000 | — |" in text
    assert "| grpo | 3 | 3 | 0.020 | 0.010 | 0.625 |" in text
    for name in ["loss.png", "reward.png", "pass_at_k.png"]:
        assert f"](plots/{name})" in text
        assert (tmp_path / "plots" / name).read_bytes().startswith(PNG_MAGIC)
    assert "Nothing to plot" not in text


def test_report_without_rewards_says_nothing_to_plot(tmp_path: Path) -> None:
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "reward.png").write_bytes(PNG_MAGIC)  # stale, from an earlier run
    sft_only = [r for r in metrics() if r["stage"] == "sft"]
    text = write_report(tmp_path, sft_only, results()).read_text()
    assert "Nothing to plot: no record has a reward" in text
    assert "plots/reward.png" not in text
    assert not (tmp_path / "plots" / "reward.png").exists()
    assert (tmp_path / "plots" / "loss.png").read_bytes().startswith(PNG_MAGIC)


def test_report_with_nothing_at_all(tmp_path: Path) -> None:
    text = write_report(tmp_path / "run", [], {}).read_text()
    assert text.count("Nothing to plot") == 3
    assert "No checkpoint was evaluated" in text
    assert "No training metrics" in text


def test_single_checkpoint_single_k(tmp_path: Path) -> None:
    r = {"model": {"pass_at_k": {"1": 0.2}, "maj_at_k": {"1": 0.2}, "num_problems": 5, "samples_per_problem": 1}}
    assert plot_pass_at_k(r, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes().startswith(PNG_MAGIC)
    text = write_report(tmp_path, [], r).read_text()
    assert "nothing to compare" in text
