"""``posttrain predict-rl``: measure which post-SFT numbers predict the post-RL winner.

The evidence behind ``posttrain predict``, rerunnable (``--config predict-rl``):

1. from one base model, train one SFT checkpoint per ``predict.variants`` entry
   (dotted overrides of the SFT stage: epochs, data fraction, demonstration-length
   filter, ...);
2. evaluate every SFT checkpoint (``stages.eval``): post-SFT pass@1, pass@k at
   large k, held-out NLL, greedy accuracy, maj@k; and record what
   ``posttrain predict`` would have said before any RL;
3. run the same GRPO stage (``stages.grpo``, identical budget and seed) from each;
4. evaluate every post-RL checkpoint (``predict.rl_samples_per_problem`` samples)
   for post-RL pass@1;
5. report Spearman's rho (with an exact permutation p-value) between each
   post-SFT predictor and post-RL pass@1 across the checkpoints.

The statistics and the report are ``posttrain.eval.predict_rl``'s; this file is
wiring only. With ``--resume``, stages whose ``final/`` exists are skipped;
evaluations come from the cache either way.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from posttrain.config import Config, load_config
from posttrain.errors import ConfigError, DataError
from posttrain.eval.predict import large_k, predict
from posttrain.eval.predict_rl import correlations, equal_budget, flatten, write_predict_rl
from posttrain.models.io import is_model_dir
from posttrain.recipes.common import model_dir, setup
from posttrain.recipes.evaluate import evaluate_dirs
from posttrain.recipes.grpo import train_grpo
from posttrain.recipes.sft import train_sft
from posttrain.train.metrics import read_metrics


def variant_configs(path: str | Path | None, overrides: list[str] | tuple[str, ...], base: Config) -> dict[str, Config]:
    """The SFT stage config of each variant, all checked before any training starts."""
    if len(base.predict.variants) < 2:
        raise ConfigError("predict-rl needs at least two SFT variants", file=str(path), field="predict.variants")
    out = {}
    for name, variant in base.predict.variants.items():
        if not isinstance(variant, dict):
            raise ConfigError(
                "a variant is a mapping of dotted overrides", file=str(path), field=f"predict.variants.{name}"
            )
        extra = [f"{k}={json.dumps(v)}" for k, v in flatten(variant).items()]
        try:
            out[name] = load_config(path, [*overrides, *extra], stage="sft")
        except ConfigError as e:
            raise ConfigError(e.message, file=str(path), field=f"predict.variants.{name}.{e.field}") from None
    return out


def _at(cfg: Config, out: Path, model_path: str) -> Config:
    return dataclasses.replace(cfg, output_dir=str(out), model=dataclasses.replace(cfg.model, path=model_path))


def _train(stage: str, cfg: Config, resume: bool) -> float:
    """Run one SFT or GRPO stage unless resuming past it; its wall time in seconds."""
    if resume and is_model_dir(Path(cfg.out) / "final"):
        return 0.0
    t0 = time.perf_counter()
    (train_sft if stage == "sft" else train_grpo)(cfg, resume=resume)
    return time.perf_counter() - t0


def run_predict_rl(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), resume: bool = False
) -> dict[str, Any]:
    base = load_config(path, overrides)
    sft_cfgs = variant_configs(path, overrides, base)
    grpo_cfg = load_config(path, overrides, stage="grpo")
    eval_cfg = load_config(path, overrides, stage="eval")
    out = setup(base)
    base_model = str(model_dir(base).model.path)
    seconds: dict[str, dict[str, float]] = {name: {} for name in sft_cfgs}
    for name, cfg in sft_cfgs.items():
        seconds[name]["sft"] = _train("sft", _at(cfg, out / name / "sft", base_model), resume)
    t0 = time.perf_counter()
    sft = evaluate_dirs(eval_cfg, {name: str(out / name / "sft" / "final") for name in sft_cfgs})
    eval_seconds = {"sft": time.perf_counter() - t0}
    try:
        prediction = predict(sft, base.predict.large_k)
    except ValueError as e:  # e.g. every problem of a checkpoint unscored: nothing to rank by
        raise DataError(f"cannot rank the SFT checkpoints: {e}", file=str(path), field="predict") from None
    for name in sft_cfgs:
        seconds[name]["grpo"] = _train(
            "grpo", _at(grpo_cfg, out / name / "grpo", str(out / name / "sft" / "final")), resume
        )
    rl_eval = dataclasses.replace(
        eval_cfg, eval=dataclasses.replace(eval_cfg.eval, samples_per_problem=base.predict.rl_samples_per_problem)
    )
    t0 = time.perf_counter()
    rl = evaluate_dirs(rl_eval, {name: str(out / name / "grpo" / "final") for name in sft_cfgs})
    eval_seconds["rl"] = time.perf_counter() - t0
    k = large_k(sft, base.predict.large_k)
    steps = {n: len(read_metrics(out / n / "sft" / "metrics.jsonl")) for n in sft_cfgs}
    record = {
        "large_k": k,
        "variants": base.predict.variants,
        "sft_steps": steps,
        "post_sft": sft,
        "post_rl": rl,
        "prediction_before_rl": prediction,
        "spearman_with_post_rl_pass1": correlations(sft, rl, k),
        "spearman_at_equal_sft_budget": equal_budget(steps, sft, rl, k),
        "seconds": {"train": seconds, "eval": eval_seconds},
    }
    write_predict_rl(out, record)
    return record
