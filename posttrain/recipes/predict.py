"""``posttrain predict``: which of several SFT checkpoints will do best after RL.

Evaluates every checkpoint in ``eval.models`` on the same held-out problems
(``eval.samples_per_problem`` samples each: make it large, 64 or more, since the
predictor is pass@k at large k) and the same held-out demonstrations, then ranks
them with ``posttrain.eval.predict``: post-SFT pass@1 (the baseline that misleads),
pass@k at large k and held-out NLL, and says which it trusts and why.

Writes ``predict.md`` and ``predict.json`` next to the evaluation's ``eval.json``,
``eval.md`` and ``plots/pass_at_k.png``. Samples come from the evaluation cache,
so predicting again, or after ``posttrain eval`` of the same checkpoints with the
same settings, samples nothing.
"""

from __future__ import annotations

import json
from typing import Any

from posttrain.config import Config
from posttrain.errors import ConfigError, DataError
from posttrain.eval.predict import format_prediction, predict
from posttrain.recipes.common import setup
from posttrain.recipes.evaluate import evaluate_dirs, write_results
from posttrain.train.metrics import console


def run_predict(cfg: Config) -> dict[str, Any]:
    """Evaluate ``eval.models`` and rank them by predicted post-RL performance."""
    models = dict(cfg.eval.models)
    if len(models) < 2:
        raise ConfigError(
            "predict ranks several SFT checkpoints: give at least two as eval.models (name -> directory)",
            file="command line",
            field="eval.models",
        )
    out = setup(cfg)
    results = evaluate_dirs(cfg, models)
    write_results(out, results)
    try:
        prediction = predict(results, cfg.predict.large_k)
    except ValueError as e:  # e.g. every problem of a checkpoint unscored: nothing to rank by
        raise DataError(f"cannot rank these checkpoints: {e}", file="command line", field="eval.models") from None
    (out / "predict.json").write_text(json.dumps(prediction, indent=2) + "\n")
    text = "# Which SFT checkpoint will do best after RL\n\n" + format_prediction(prediction) + "\n"
    (out / "predict.md").write_text(text)
    console.print(
        f"predicted best after RL: {prediction['predicted_order'][0]} "
        f"(trusting {prediction['predictors'][prediction['trusted']]['name']}); report: {out / 'predict.md'}"
    )
    return {"results": results, "prediction": prediction}
