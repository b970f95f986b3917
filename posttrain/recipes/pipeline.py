"""The whole pipeline: base model -> SFT -> GRPO -> evaluation of both -> report.

``posttrain run`` calls ``run_pipeline``. Each stage gets the file's config with
its ``stages.<name>`` overlay and writes under ``output_dir/<stage>/``; the next
stage starts from the previous stage's ``final/`` directory. With ``resume`` a
stage whose ``final/`` exists is skipped and an interrupted one continues from
its last checkpoint.

With a ``lora`` section, a stage's ``final/`` is an adapter directory; the next
stage starts from it merged into a full model (``output_dir/<stage>/merged_base``,
see ``posttrain.recipes.common.model_dir``) and trains fresh adapters of its own,
and evaluation loads it merged in memory.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from posttrain.config import Config, load_config
from posttrain.eval.report import write_report
from posttrain.models.io import is_model_dir
from posttrain.recipes.common import model_dir, setup
from posttrain.recipes.evaluate import evaluate_dirs, write_results
from posttrain.recipes.grpo import train_grpo
from posttrain.recipes.sft import train_sft
from posttrain.train.metrics import console, read_metrics


def _stage(cfg: Config, out: Path, name: str, model_path: str) -> Config:
    model = dataclasses.replace(cfg.model, path=model_path)
    return dataclasses.replace(cfg, output_dir=str(out / name), model=model)


def _done(stage_dir: Path) -> bool:
    return is_model_dir(stage_dir / "final")  # a full model, or a LoRA run's adapters


def run_pipeline(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), resume: bool = False
) -> dict[str, Any]:
    base = load_config(path, overrides)
    sft_cfg = load_config(path, overrides, stage="sft")
    grpo_cfg = load_config(path, overrides, stage="grpo")
    eval_cfg = load_config(path, overrides, stage="eval")
    out = setup(base)
    base_model = str(model_dir(base).model.path)

    sft_dir, grpo_dir = out / "sft", out / "grpo"
    if not (resume and _done(sft_dir)):
        train_sft(_stage(sft_cfg, out, "sft", base_model), resume=resume)
    if not (resume and _done(grpo_dir)):
        train_grpo(_stage(grpo_cfg, out, "grpo", str(sft_dir / "final")), resume=resume)

    results = evaluate_dirs(eval_cfg, {"sft": str(sft_dir / "final"), "grpo": str(grpo_dir / "final")})
    write_results(out, results)
    metrics = read_metrics(sft_dir / "metrics.jsonl") + read_metrics(grpo_dir / "metrics.jsonl")
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    report = write_report(out, metrics, results, title=f"posttrain run: {base.name}")
    sft1, grpo1 = results["sft"]["pass_at_k"]["1"], results["grpo"]["pass_at_k"]["1"]
    console.print(
        f"held-out pass@1 (T={eval_cfg.eval.sampling.temperature}): sft {sft1:.3f} -> grpo {grpo1:.3f} "
        f"({100 * (grpo1 - sft1):+.1f} points); report: {report}"
    )
    return results
