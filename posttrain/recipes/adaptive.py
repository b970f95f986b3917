"""`posttrain adaptive`: train a temperature head with LPO, the LM frozen, then compare it with fixed temperatures.

Adaptive Decoding via Latent Preference Optimization (Dhuliawala et al. 2024, arXiv
2411.09661). The head (``posttrain.models.temperature_head``) reads the frozen
model's last hidden state and picks a temperature from ``adaptive.temperatures``,
per response or per token (``adaptive.level``). One iteration
(``train.max_steps`` of them):

1. draw ``rollout.prompts_per_step`` training prompts (a pure function of the seed
   and the iteration) and sample ``rollout.samples_per_prompt`` responses of each,
   every response's temperatures drawn from the head (the paper's Eq. 5);
2. score them with the task's reward (``reward``); on the mixed decoding task a
   variety prompt's samples are scored as a group (a repeated number scores 0,
   ``posttrain.tasks.mixed_decoding.group_rewards``);
3. per prompt, the best response against the worst (``best_worst``; a prompt whose
   samples all score alike gives no pair and is counted);
4. one LPO step (``posttrain.algorithms.lpo``) on the head's log-probabilities of
   the chosen and rejected responses' temperature choices.

Then, on ``adaptive.eval_prompts`` held-out prompts of each kind, the head (its
most likely temperature, ``adaptive.eval_choice``) against every fixed temperature
of the set: mean reward per prompt kind, written to ``output_dir/adaptive.json``.

The head is saved beside the model (``final/temperature_head.safetensors`` and
``.json``); a ``model.path`` that holds one continues from it. Given no
``model.path`` and a ``stages.sft`` overlay, the built-in tiny model is first
fine-tuned on the task (``output_dir/sft``), as the packaged ``adaptive-decoding``
experiment does.

Checkpoints (``train.save_every``): ``output_dir/checkpoints/step_N/`` holds the head
(weights and settings) and ``trainer_state.pt`` (optimiser, scheduler, RNG, step),
written and published atomically as the model's checkpoints are
(``posttrain.train.checkpoint.save_files_checkpoint``); the frozen LM is not copied.
``--resume`` continues from the newest loadable one: an iteration's prompts, samples
and pair draws are pure functions of the seed and the iteration, so the resumed run's
head equals the uninterrupted run's (tested). A pair is best against worst only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, cast

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from posttrain.algorithms.lpo import LPOBatch, choice_batch, lpo_batch_loss
from posttrain.config import Config, load_config
from posttrain.data.tokenize import encode_prompt, fit_prompts
from posttrain.errors import CheckpointError, DataError
from posttrain.models.io import context_length, is_model_dir, load_model, load_tokenizer
from posttrain.models.temperature_head import (
    HEAD_WEIGHTS,
    TemperatureHead,
    load_head,
    model_hidden_size,
    new_head,
    save_head,
)
from posttrain.recipes.common import model_dir, setup
from posttrain.recipes.online_dpo import scored_pairs
from posttrain.records import Completion, SamplingParams, ScoredGroups
from posttrain.rewards.registry import build_reward
from posttrain.rollout.base import RolloutEngine
from posttrain.rollout.factory import build_engine, check_head_engine
from posttrain.rollout.groups import sample_groups
from posttrain.rollout.torch_engine import TorchEngine
from posttrain.seeds import derive_seed
from posttrain.tasks.base import Example, Task
from posttrain.tasks.mixed_decoding import KINDS, group_rewards, kind_of
from posttrain.tasks.registry import make_task
from posttrain.train.checkpoint import latest_checkpoint, load_trainer_state, save_files_checkpoint, save_final
from posttrain.train.loop import build_optimizer, optimizer_step
from posttrain.train.metrics import MetricsWriter, console, progress

RESULTS = "adaptive.json"


def run_adaptive(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), resume: bool = False) -> Path:
    """SFT first when there is no ``model.path`` and the config has ``stages.sft``; then ``train_adaptive``.

    ``resume``: an SFT stage that finished (``output_dir/sft/final``) is not run again, and
    the head's training continues from its last checkpoint.
    """
    cfg = load_config(path, overrides, stage="adaptive")
    check_head_engine(cfg)  # before the SFT stage and any model load
    if cfg.model.path is None and "sft" in cfg.stages:
        from posttrain.recipes.sft import train_sft

        out = setup(cfg)
        sft_dir = out / "sft"
        if not (resume and is_model_dir(sft_dir / "final")):
            sft = load_config(path, overrides, stage="sft")
            base = str(model_dir(cfg).model.path)
            train_sft(
                dataclasses.replace(sft, output_dir=str(sft_dir), model=dataclasses.replace(sft.model, path=base))
            )
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=str(sft_dir / "final")))
    return train_adaptive(cfg, resume=resume)


def train_adaptive(cfg: Config, resume: bool = False) -> Path:
    """Train the head, save it beside the model in ``output_dir/final``, compare; return ``final``.

    ``resume``: continue from the newest loadable ``output_dir/checkpoints/step_*``.
    """
    check_head_engine(cfg)
    out = setup(cfg)
    cfg = model_dir(cfg)
    assert cfg.model.path is not None  # model_dir resolved it
    tokenizer = load_tokenizer(cfg.model.path)
    model = load_model(cfg.model.path, cfg.model.dtype, cfg.model.device).eval()
    model.requires_grad_(False)  # LPO trains the head only
    root = out / "checkpoints"
    ckpt = latest_checkpoint(root) if resume else None
    head = _open_head(cfg, model, ckpt)
    task = make_task(cfg.data, tokenizer)
    optimizer, scheduler = build_optimizer(head, cfg.optim, cfg.train.max_steps)
    start = load_trainer_state(ckpt, optimizer, scheduler)["step"] if ckpt else 0
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)  # type: ignore[arg-type]
    writer = MetricsWriter(out / "metrics.jsonl", resume_step=start if ckpt else None)
    with contextlib.ExitStack() as stack:
        engine = head_engine(cfg, model, tokenizer, head)
        stack.callback(engine.close)
        scorer = build_reward(cfg.reward, task, dtype=cfg.model.dtype, device=cfg.model.device)
        stack.callback(scorer.close)
        with progress() as bar:
            bar_id = bar.add_task("lpo", total=cfg.train.max_steps, completed=start, info="")
            for it in range(start, cfg.train.max_steps):
                examples, prompts = _draw(cfg, task, tokenizer, model, it)
                sampling = _sampling(cfg, "sample", derive_seed(cfg.seed, it, 3))
                groups = sample_groups(engine, scorer, examples, prompts, group_size=cfg.rollout.samples_per_prompt,
                                       sampling=sampling, policy_version=0, doom_groups=False)  # fmt: skip
                record = lpo_step(cfg, it, head, model, pad, optimizer, scheduler, groups)
                if not engine.capabilities.in_process:  # Ray workers sample with a copy of the head
                    cast(Any, engine).sync_head(head)
                writer.write(record)
                every = cfg.train.save_every
                if every and (it + 1) % every == 0:
                    save_files_checkpoint(root, it + 1, lambda d: save_head(head, d), optimizer, scheduler,
                                          keep=cfg.train.keep_checkpoints)  # fmt: skip
                bar.update(bar_id, advance=1, info=f"reward {record['reward']:.3f}, pairs {record['pairs']}")
        writer.close()
        final = save_final(model, tokenizer, out / "final")
        save_head(head, final)
        if cfg.adaptive.eval_prompts:
            results = compare(cfg, engine, head, tokenizer, task, scorer)
            (out / RESULTS).write_text(json.dumps(results, indent=2) + "\n")
            console.print(format_results(results))
    console.print(f"adaptive: {cfg.train.max_steps} LPO iterations -> {final} (the model and its temperature head)")
    return final


def head_engine(
    cfg: Config, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, head: TemperatureHead
) -> RolloutEngine:
    """The engine ``engine.backend`` asks for, sampling at ``head``'s picks: the in-process sampler over the
    frozen model itself, or Ray workers, each with a copy of the model and of the head (synced after every
    LPO step)."""
    if cfg.engine.backend == "torch":
        return TorchEngine(model, tokenizer, batch_size=cfg.engine.batch_size, head=head)
    assert cfg.model.path is not None
    engine = build_engine(cfg, model, tokenizer, cfg.model.path)
    try:
        cast(Any, engine).sync_head(head)
    except BaseException:
        engine.close()
        raise
    return engine


def _open_head(cfg: Config, model: PreTrainedModel, ckpt: Path | None = None) -> TemperatureHead:
    """The checkpoint's head when resuming, else the one saved beside ``model.path``, else a fresh
    uniform one from the ``adaptive`` section."""
    a = cfg.adaptive
    if ckpt is not None:
        resumed = load_head(ckpt, model.device)
        if resumed is None:
            raise CheckpointError(f"no temperature head ({HEAD_WEIGHTS}) in this checkpoint", file=str(ckpt))
        return resumed.train()
    assert cfg.model.path is not None
    head = load_head(cfg.model.path, model.device)
    if head is not None:
        console.print(f"adaptive: continuing from the temperature head in {cfg.model.path} ({head.settings})")
        return head.train()
    fresh = new_head(a.temperatures, a.level, model_hidden_size(model), a.width, seed=cfg.seed)
    return fresh.to(model.device).train()


def _sampling(cfg: Config, adaptive: str, seed: int, temperature: float = 1.0) -> SamplingParams:
    s = cfg.sampling
    return SamplingParams(temperature, s.top_p, s.top_k, s.max_new_tokens, seed=seed, adaptive=adaptive)  # type: ignore[arg-type]


def _draw(
    cfg: Config, task: Task, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, it: int
) -> tuple[list[Example], list[list[int]]]:
    drawn = task.examples("train", cfg.rollout.prompts_per_step, derive_seed(cfg.seed, it, 2))
    encoded = [encode_prompt(tokenizer, task.prompt(ex)) for ex in drawn]
    drawn, encoded, _ = fit_prompts(drawn, encoded, cfg.sampling.max_new_tokens, context_length(model),
                                    cfg.data.truncation)  # fmt: skip
    if not drawn:
        raise DataError(
            f"iteration {it + 1}: no prompt leaves room for sampling.max_new_tokens={cfg.sampling.max_new_tokens} "
            "in the model's context",
            field="sampling.max_new_tokens",
        )
    return drawn, encoded


def group_scores(cfg: Config, groups: ScoredGroups) -> list[float | None]:
    """Every sample's reward, row i*G+j; on the mixed decoding task with the variety prompts' group rule."""
    G = groups.group_size
    flat = [None if s != s else float(s) for s in groups.scores.flatten().tolist()]  # NaN: unscored
    if cfg.data.task != "mixed_decoding":
        return flat
    out: list[float | None] = []
    for i, ex in enumerate(groups.examples):
        texts = [c.text for c in groups.completions[i * G : (i + 1) * G]]
        out.extend(group_rewards(ex, texts, flat[i * G : (i + 1) * G]))
    return out


def lpo_step(
    cfg: Config, it: int, head: TemperatureHead, model: PreTrainedModel, pad: int,
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, groups: ScoredGroups,
) -> dict[str, Any]:  # fmt: skip
    """Pairs from the iteration's scores, one LPO step on them; the iteration's record."""
    G = groups.group_size
    scores = group_scores(cfg, groups)
    rng = random.Random(derive_seed(cfg.seed, it, 6))
    pairs, skipped = scored_pairs("best_worst", scores, G, rng)
    record: dict[str, Any] = {"stage": "adaptive", "step": it + 1, "pairs": len(pairs),
                              **{f"skipped_{k}": v for k, v in skipped.items()},
                              **sample_metrics(groups, scores, head)}  # fmt: skip
    if not pairs:  # no preference in any prompt: no update, the schedule still advances
        with warnings.catch_warnings():  # torch warns when the scheduler steps without the optimiser
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
        return {**record, "loss": None, "skipped": True}
    mbs = cfg.train.micro_batch_size
    micro = []
    for start in range(0, len(pairs), mbs):
        part = pairs[start : start + mbs]
        chosen = choice_batch(model, [groups.completions[c] for c, _, _ in part], head.level, pad)
        rejected = choice_batch(model, [groups.completions[r] for _, r, _ in part], head.level, pad)
        weights = torch.tensor([w for _, _, w in part], device=chosen.hidden.device)
        micro.append(LPOBatch(chosen, rejected, weights))
    beta = cfg.adaptive.beta
    stats = optimizer_step(head, optimizer, scheduler, micro, lambda b: lpo_batch_loss(head, b, beta),
                           sum(w for _, _, w in pairs), cfg.train.grad_clip)  # fmt: skip
    return {**record, **stats}


def sample_metrics(groups: ScoredGroups, scores: list[float | None], head: TemperatureHead) -> dict[str, Any]:
    """Mean reward and mean picked temperature, overall and per prompt kind on the mixed task."""
    G = groups.group_size
    by_kind: dict[str, list[tuple[float | None, Completion]]] = {}
    for i, ex in enumerate(groups.examples):
        rows = [(scores[i * G + j], groups.completions[i * G + j]) for j in range(G)]
        by_kind.setdefault(kind_of(ex), []).extend(rows)
        by_kind.setdefault("all", []).extend(rows)
    record: dict[str, Any] = {}
    for kind, rows in by_kind.items():
        rewards = [s for s, _ in rows if s is not None]
        temps = [head.settings.temperatures[k] for _, c in rows for k in (c.temperature_choices or [])]
        suffix = "" if kind == "all" else f"/{kind}"
        record[f"reward{suffix}"] = sum(rewards) / len(rewards) if rewards else math.nan
        record[f"temperature{suffix}"] = sum(temps) / len(temps) if temps else math.nan
    return record


def eval_sets(cfg: Config, task: Task) -> dict[str, list[Example]]:
    """``adaptive.eval_prompts`` held-out prompts of each kind (one kind, ``all``, for other tasks)."""
    n = cfg.adaptive.eval_prompts
    if cfg.data.task != "mixed_decoding":
        return {"all": task.examples("test", n, derive_seed(cfg.seed, 8))}
    pool = task.examples("test", 4 * n, derive_seed(cfg.seed, 8))
    return {kind: [ex for ex in pool if kind_of(ex) == kind][:n] for kind in KINDS}


def compare(
    cfg: Config, engine: RolloutEngine, head: TemperatureHead, tokenizer: PreTrainedTokenizerBase, task: Task,
    scorer: Any,
) -> dict[str, Any]:  # fmt: skip
    """Mean reward per prompt kind: the head (the one ``engine`` samples with) against every fixed temperature
    of its set, same prompts and seed."""
    sets = eval_sets(cfg, task)
    settings: dict[str, SamplingParams] = {
        f"T={t:g}": _sampling(cfg, "off", derive_seed(cfg.seed, 9), temperature=t) for t in head.settings.temperatures
    }
    settings["adaptive"] = _sampling(cfg, cfg.adaptive.eval_choice, derive_seed(cfg.seed, 9))
    results: dict[str, dict[str, float]] = {name: {} for name in settings}
    picks: dict[str, dict[str, float]] = {}
    G = cfg.adaptive.eval_samples
    for kind, examples in sets.items():
        prompts = [encode_prompt(tokenizer, task.prompt(ex)) for ex in examples]
        for name, sampling in settings.items():
            groups = sample_groups(engine, scorer, examples, prompts, group_size=G, sampling=sampling,
                                   policy_version=0, doom_groups=False)  # fmt: skip
            scores = [s for s in group_scores(cfg, groups) if s is not None]
            results[name][kind] = sum(scores) / len(scores) if scores else math.nan
            if name == "adaptive":
                counts = Counter(k for c in groups.completions for k in (c.temperature_choices or []))
                total = sum(counts.values())
                picks[kind] = {f"{t:g}": counts[k] / total for k, t in enumerate(head.settings.temperatures)}
    for r in results.values():
        r["mean"] = sum(r[k] for k in sets) / len(sets)  # every kind weighs the same
    best_fixed = max((n for n in results if n != "adaptive"), key=lambda n: results[n]["mean"])
    return {"kinds": {k: len(v) for k, v in sets.items()}, "samples_per_prompt": G,
            "eval_choice": cfg.adaptive.eval_choice, "level": head.level, "results": results,
            "adaptive_picks": picks, "best_fixed": best_fixed}  # fmt: skip


def format_results(results: dict[str, Any]) -> str:
    """The comparison as a small table: one row per setting, a column per prompt kind."""
    kinds = [*results["kinds"], "mean"]
    lines = [f"{'':<10}" + "".join(f"{k:>10}" for k in kinds)]
    for name, row in results["results"].items():
        lines.append(f"{name:<10}" + "".join(f"{row[k]:>10.3f}" for k in kinds))
    picks = "; ".join(
        f"{k}: " + ", ".join(f"T={t} {p:.0%}" for t, p in v.items()) for k, v in results["adaptive_picks"].items()
    )
    lines.append(f"head's picks ({results['eval_choice']}): {picks}; best fixed: {results['best_fixed']}")
    return "\n".join(lines)
