"""The report's views: loss per stage on its own axis, reward smoothed with a band, the RL diagnostics,
pass@k with maj@k and greedy marked, sample generations, and whether compared intervals overlap."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from posttrain.cli import main
from posttrain.eval.plots import moving_band, smooth_window
from posttrain.eval.report import overlap_verdict, write_report
from tests.conftest import FAST

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics() -> list[dict[str, Any]]:
    sft = [{"stage": "sft", "step": s, "loss": 2.0 / s, "lr": 1e-3} for s in range(1, 5)]
    grpo = [
        {"stage": "grpo", "step": s, "loss": -0.01 * s, "reward": r, "entropy": 1.0 - 0.1 * s, "clip_frac": 0.05,
         "kl": 0.01 * s, "completion_len": 20.0 + s, "truncated_frac": 0.0}
        for s, r in zip(range(1, 5), [0.0, 0.5, 0.25, 0.75])
    ]  # fmt: skip
    return sft + grpo


def _results() -> dict[str, dict[str, Any]]:
    def one(p1: float, ci: list[float], greedy: float, gci: list[float], text: str) -> dict[str, Any]:
        return {"pass_at_k": {"1": p1, "4": p1 + 0.2}, "pass_at_k_ci": {"1": ci, "4": [p1 + 0.1, p1 + 0.3]},
                "maj_at_k": {"1": p1, "4": p1 + 0.1}, "greedy_accuracy": greedy, "greedy_accuracy_ci": gci,
                "samples_per_problem": 4, "num_problems": 20,
                "sample_generations": [{"id": "p0", "prompt": "1+2=", "completion": text, "answer": text,
                                        "score": float(text == "3"), "gold": "3"}]}  # fmt: skip

    return {
        "sft": one(0.40, [0.30, 0.50], 0.20, [0.10, 0.30], "4"),
        "grpo": one(0.55, [0.45, 0.65], 0.50, [0.40, 0.60], "3"),
    }


def test_moving_band_by_hand() -> None:
    mean, lo, hi = moving_band([0.0, 1.0, 0.0, 1.0], window=2)
    assert mean == [0.0, 0.5, 0.5, 0.5]
    assert lo == [0.0, 0.0, 0.0, 0.0] and hi == [0.0, 1.0, 1.0, 1.0]  # std of {0, 1} is 0.5
    assert (smooth_window(4), smooth_window(100), smooth_window(10_000)) == (1, 10, 50)


def test_overlap_verdicts() -> None:
    assert overlap_verdict((0.3, 0.5), (0.45, 0.65)).endswith("overlap: not shown to differ by this evaluation")
    assert overlap_verdict((0.1, 0.3), (0.4, 0.6)).endswith("do not overlap: a difference beyond sampling noise")
    assert overlap_verdict((0.4, 0.6), (0.1, 0.3)).startswith("95% intervals [0.400, 0.600] and [0.100, 0.300] do not")
    assert overlap_verdict(None, (0.1, 0.3)) == "no interval to compare"


def test_report_has_every_view(tmp_path: Path) -> None:
    text = write_report(tmp_path, _metrics(), _results(), title="tiny").read_text()
    for name in ("loss.png", "reward.png", "rl_diagnostics.png", "pass_at_k.png"):
        assert f"](plots/{name})" in text
        assert (tmp_path / "plots" / name).read_bytes().startswith(PNG_MAGIC)
    # pass@1 0.400 [0.300, 0.500] -> 0.550 [0.450, 0.650]: 0.450 < 0.500, the intervals overlap;
    # greedy 0.200 [0.100, 0.300] -> 0.500 [0.400, 0.600]: 0.300 < 0.400, they do not
    assert ("- sft → grpo: +15.0 points (0.400 → 0.550); 95% intervals [0.300, 0.500] and [0.450, 0.650] overlap: "
            "not shown to differ by this evaluation") in text  # fmt: skip
    assert ("- sft → grpo, greedy accuracy: +30.0 points (0.200 → 0.500); 95% intervals [0.100, 0.300] and "
            "[0.400, 0.600] do not overlap: a difference beyond sampling noise") in text  # fmt: skip
    assert "### Sample generations" in text and "#### sft" in text and "#### grpo" in text
    assert "- problem `p0` (gold '3'; answer '4', score 0)" in text


def test_sample_generations_show_chat_prompts_as_turns_and_keep_lines_inside_the_block() -> None:
    from posttrain.eval.checking import Check
    from posttrain.eval.report import format_samples, sample_generations
    from posttrain.records import Completion
    from posttrain.tasks.base import Example

    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+2?"}]
    rows = sample_generations([Example(id="q", prompt=chat, answer="3")],
                              [[Completion([], [], [], "stop", "1+2=3\n#### 3")]],
                              [[Check(score=1.0, answer="3", status="ok")]])  # fmt: skip
    assert rows[0]["prompt"] == "system: Be brief.\nuser: 1+2?"  # not the list's repr
    text = format_samples({"m": {"sample_generations": rows}})
    assert text is not None
    assert "  system: Be brief.\n  user: 1+2?\n  --- completion ---\n  1+2=3\n  #### 3\n  ```" in text


def test_no_rl_records_no_diagnostics_section(tmp_path: Path) -> None:
    text = write_report(tmp_path, _metrics()[:4], {}).read_text()
    assert "RL diagnostics" not in text and not (tmp_path / "plots" / "rl_diagnostics.png").exists()


@pytest.mark.slow
def test_eval_records_sample_generations_the_report_shows(tmp_path: Path, tiny_dir: Path) -> None:
    out = tmp_path / "e"
    assert main(["eval", *FAST, f"eval.models={{a: {tiny_dir}}}", "eval.samples_per_problem=2", "eval.heldout_demos=0",
                 f"output_dir={out}"]) == 0  # fmt: skip
    results = json.loads((out / "eval.json").read_text())
    shown = results["a"]["sample_generations"]
    assert len(shown) == 3 and all(set(r) == {"id", "prompt", "completion", "answer", "score", "gold"} for r in shown)
    text = write_report(tmp_path / "r", [], results).read_text()
    assert all(f"- problem `{r['id']}`" in text for r in shown)
    d = results["a"]["diversity"]  # the eval's diversity record, as a row of the report's table
    row = f"| a | {d['distinct_n']['1']:.3f} | {d['distinct_n']['2']:.3f} |"
    assert "### Diversity of the samples" in text and row in text
