"""``posttrain generate``: sample completions and write them, scored when the task can.

The engine is whichever ``engine.backend`` names (``posttrain.rollout.factory``).
"""

from __future__ import annotations

import json
from typing import Any

from posttrain.config import Config
from posttrain.data.tokenize import check_length, encode_prompt
from posttrain.errors import DataError
from posttrain.eval.checking import TaskChecker
from posttrain.eval.sampling import eval_problems
from posttrain.models.io import context_length, load_model, load_tokenizer
from posttrain.recipes.common import model_dir, setup
from posttrain.rollout.base import SamplingParams
from posttrain.rollout.factory import build_engine, with_saved_head
from posttrain.seeds import derive_seed
from posttrain.tasks.base import Example
from posttrain.tasks.prompting import styled_prompt
from posttrain.tasks.registry import make_task
from posttrain.train.metrics import console


def run_generate(cfg: Config, prompts: list[str] | None = None) -> list[dict[str, Any]]:
    """Generate for ``prompts``, or for ``eval.num_problems`` test problems of the task.

    Writes ``output_dir/generations.jsonl``: prompt, completion, finish reason, and
    reward when the row has a gold answer.
    """
    out = setup(cfg)
    cfg = model_dir(cfg)
    tokenizer = load_tokenizer(cfg.model.path)  # type: ignore[arg-type]
    model = load_model(cfg.model.path, cfg.model.dtype, cfg.model.device)  # type: ignore[arg-type]
    task = make_task(cfg.data, tokenizer, whole_file=not prompts)
    if prompts:  # as a chat model expects them: its template and data.system_prompt
        examples = [
            Example(id=f"prompt-{i}", prompt=styled_prompt(task, p), source=f"command line:{i + 1}")
            for i, p in enumerate(prompts)
        ]
    else:
        examples = eval_problems(task, cfg.eval.num_problems, cfg.seed)
    if not examples:
        raise DataError("no prompts to generate for", file=cfg.data.path or cfg.data.task)
    ids = [encode_prompt(tokenizer, task.prompt(ex)) for ex in examples]
    s = cfg.sampling
    for ex, p in zip(examples, ids):
        check_length(ex, len(p), s.max_new_tokens, context_length(model))
    sampling = SamplingParams(
        s.temperature, s.top_p, s.top_k, s.max_new_tokens, seed=derive_seed(cfg.seed, 5), adaptive=s.adaptive
    )  # sampling.adaptive: the temperature head saved beside the model picks the temperatures
    engine = with_saved_head(build_engine(cfg, model, tokenizer, cfg.model.path), cfg.model.path, s.adaptive)  # type: ignore[arg-type]
    try:
        completions = engine.generate(ids, sampling)
    finally:
        engine.close()
    # answers are checked as evaluation checks them: under reward.timeout_s, a failure is no reward, never 0
    gold = [i for i, ex in enumerate(examples) if ex.answer is not None]
    checker = TaskChecker(task, cfg.reward.timeout_s, cfg.reward.workers)
    checks = dict(zip(gold, checker.run(examples, [(i, completions[i].text) for i in gold]))) if gold else {}
    rows = []
    for i, (ex, c) in enumerate(zip(examples, completions)):
        row: dict[str, Any] = {"id": ex.id, "prompt": ex.prompt, "completion": c.text, "finish_reason": c.finish_reason}
        if c.temperature_choices is not None:  # the head's picks, as indices into its temperatures
            row["temperature_choices"] = c.temperature_choices
        if i in checks:
            row["answer"] = ex.answer
            check = checks[i]
            row["reward"] = check.score if check.status == "ok" else None
            if check.status != "ok":
                row["check"] = f"{check.status}: {check.error}" if check.error else check.status
        rows.append(row)
    with open(out / "generations.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    for r in rows[:5]:
        console.print(f"[bold]{r['prompt']!r}[/bold] -> {r['completion']!r}")
    console.print(f"generate: {len(rows)} completions -> {out / 'generations.jsonl'}")
    return rows
