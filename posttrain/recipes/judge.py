"""``posttrain judge``: train an LLM judge with GRPO on verdicts that can be checked (J1), and evaluate it.

J1 (Whitehouse et al. 2025, "J1: Incentivizing Thinking in LLM-as-a-Judge via
Reinforcement Learning"): the judge reads a question and two responses (or one, pointwise),
reasons, states a verdict, and is rewarded 1 when the verdict picks the known winner. Here
it runs through the same RL path as any policy: the verdict task (``data.task: judge``,
``posttrain.tasks.judging``) supplies the prompts, the ``verdict`` reward component
(``posttrain.rewards.judge``) applies the both-orders rule, and ``train_online`` with
``GRPOStep`` trains.

``posttrain judge`` runs, under ``output_dir``:

1. ``sft/`` when the config has a ``stages.sft`` overlay: SFT on the verdict task's
   demonstrations (``data.judge.demo: random`` teaches the verdict's form and nothing
   about which side is right: a format warm-up for a model that cannot yet state one);
2. a held-out evaluation of the starting judge, GRPO (``grpo/``, its ``stages.grpo``
   overlay), and the same evaluation of the trained judge: ``judge_eval.json``
   ``{"before": ..., "after": ...}`` (``posttrain.eval.judge``).

``posttrain judge eval model.path=DIR [data.path=pairs.jsonl]`` evaluates one judge:
``judge_eval.json`` ``{"model": ...}``. Every row of ``data.path`` is a held-out pair there;
without ``data.path`` the built-in arithmetic pairs' test split is used.

``posttrain judge`` sets ``data.task: judge`` (``data.judge.source: preferences`` when
``data.path`` is given and the source was left at its default) and, when ``reward`` is
left at its default, the ``verdict`` reward.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

from posttrain.config import Config, RewardComponentConfig, load_config
from posttrain.errors import ConfigError, DataError
from posttrain.eval.judge import PairJudgment, judge_metrics, summary_line
from posttrain.judges.parse import parse_pairwise, parse_pointwise
from posttrain.models.io import context_length, load_model, load_tokenizer
from posttrain.records import SamplingParams
from posttrain.tasks.judging import JudgeTask

DEFAULT_REWARD = [RewardComponentConfig(kind="verifier")]


def judge_config(cfg: Config) -> Config:
    """``cfg`` as a judge run: the verdict task and, unless a reward is configured, the verdict reward."""
    data = cfg.data
    if data.task != "judge":
        judge = data.judge
        if data.path is not None and judge.source == "arithmetic":
            judge = dataclasses.replace(judge, source="preferences")
        data = dataclasses.replace(data, task="judge", judge=judge)
    reward = cfg.reward
    if list(reward.components) == DEFAULT_REWARD:
        reward = dataclasses.replace(reward, components=[RewardComponentConfig(kind="verdict")])
    if data.judge.reward == "both_orders" and cfg.rollout.prompts_per_step % 2:
        raise ConfigError(
            f"must be even with data.judge.reward=both_orders: each pair's two prompts are drawn together "
            f"(got {cfg.rollout.prompts_per_step})",
            field="rollout.prompts_per_step",
        )
    return dataclasses.replace(cfg, data=data, reward=reward)


def _unwrap(task: Any) -> JudgeTask:
    inner = getattr(task, "task", task)
    assert isinstance(inner, JudgeTask)
    return inner


def judge_eval(cfg: Config, model_path: str | Path, whole_file: bool = False) -> dict[str, Any]:
    """The judge at ``model_path`` on the held-out pairs: ``posttrain.eval.judge.judge_metrics`` plus counts.

    One verdict per order, sampled as ``eval.sampling`` says (temperature 0: greedy), with the
    engine ``engine`` names. ``eval.num_problems`` pairs (0: every pair of a file, 200 generated).
    """
    from posttrain.data.tokenize import encode_prompt
    from posttrain.rollout.factory import build_engine
    from posttrain.tasks.registry import make_task

    cfg = judge_config(cfg)
    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path, cfg.model.dtype, cfg.model.device).eval()
    task = make_task(cfg.data, tokenizer, whole_file=whole_file)
    inner = _unwrap(task)
    pairs = inner.pairs("test", cfg.eval.num_problems or None, cfg.seed)
    restyle = getattr(task, "restyle", lambda ex: ex)
    examples = [restyle(ex) for k, p in enumerate(pairs) for ex in inner.pair_examples(p, k)]
    s = cfg.eval.sampling
    ctx = context_length(model)
    encoded = [encode_prompt(tokenizer, ex.prompt) for ex in examples]
    fits = [i for i, ids in enumerate(encoded) if ctx is None or len(ids) + s.max_new_tokens <= ctx]
    engine = build_engine(dataclasses.replace(cfg, sampling=s), model, tokenizer, model_path)
    try:
        done = engine.generate(
            [encoded[i] for i in fits], SamplingParams(s.temperature, s.top_p, s.top_k, s.max_new_tokens, seed=cfg.seed)
        )
    finally:
        engine.close()
    texts: list[str | None] = [None] * len(examples)
    for i, c in zip(fits, done):
        texts[i] = c.text
    parse = parse_pairwise if inner.mode == "pairwise" else parse_pointwise
    verdicts = [None if t is None else parse(t) for t in texts]
    rows = [PairJudgment(verdicts[2 * k], verdicts[2 * k + 1], p.subset) for k, p in enumerate(pairs)]
    out = judge_metrics(rows, inner.mode)
    out["too_long"] = len(examples) - len(fits)  # prompts with no room for the verdict: unparsed
    out["judge_tokens"] = sum(len(c.completion_ids) for c in done)
    out["samples"] = [{"prompt": examples[i].prompt, "verdict": texts[i]} for i in range(min(4, len(examples)))]
    return out


def sample_pairs(cfg: Config, out: Path) -> Config:
    """``data.judge.source: sampled`` as preference files: a correct vs an incorrect sample of each problem.

    The verifiable task is the built-in arithmetic one, or ``data.path`` read as ``data.task: jsonl``
    reads it (``data.format``, ``data.verifier``). ``data.judge.sample_from`` draws
    ``data.judge.samples_per_problem`` samples of each of ``data.judge.problems`` training problems
    (and ``eval.num_problems``, or 200, test problems) at the ``sampling`` settings; a problem with a
    correct and an incorrect sample gives one pair, a random one of each (the "Bridging" paper's
    pairing); the others are skipped and counted. Written to ``out/sampled_{train,test}.jsonl``;
    the returned config reads them as ``data.judge.source: preferences``.
    """
    from posttrain.data.tokenize import encode_prompt
    from posttrain.rollout.factory import build_engine
    from posttrain.seeds import derive_seed
    from posttrain.tasks.registry import make_task
    from posttrain.train.metrics import console

    j = cfg.data.judge
    assert j.sample_from is not None  # checked by config validation
    base = dataclasses.replace(cfg.data, task="jsonl" if cfg.data.path is not None else "arithmetic")
    tokenizer = load_tokenizer(j.sample_from)
    model = load_model(j.sample_from, cfg.model.dtype, cfg.model.device).eval()
    task = make_task(base, tokenizer)
    engine = build_engine(cfg, model, tokenizer, j.sample_from)
    s, G = cfg.sampling, j.samples_per_problem
    files: dict[str, Path] = {}
    try:
        for split, n in (("train", j.problems), ("test", cfg.eval.num_problems or 200)):
            problems = task.examples(split, n, cfg.seed)  # type: ignore[arg-type]
            prompts = [encode_prompt(tokenizer, task.prompt(ex)) for ex in problems]
            seed = derive_seed(cfg.seed, 0 if split == "train" else 1, 11)
            done = engine.generate([p for p in prompts for _ in range(G)], SamplingParams(
                s.temperature, s.top_p, s.top_k, s.max_new_tokens, seed=seed))  # fmt: skip
            rng = random.Random(seed)
            rows = []
            for i, ex in enumerate(problems):
                texts = [c.text for c in done[i * G : (i + 1) * G]]
                right = [t for t in texts if task.verify(ex, t) > 0]
                wrong = [t for t in texts if task.verify(ex, t) <= 0]
                if right and wrong:
                    rows.append({"prompt": task.prompt(ex), "chosen": rng.choice(right), "rejected": rng.choice(wrong)})
            if not rows:
                raise DataError(
                    f"no {split} problem had both a correct and an incorrect sample among {G} "
                    f"({len(problems)} problems): sample more (data.judge.samples_per_problem) or from another model",
                    file=j.sample_from, field="data.judge.sample_from",
                )  # fmt: skip
            files[split] = out / f"sampled_{split}.jsonl"
            files[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
            console.print(f"judge pairs: {len(rows)} of {len(problems)} {split} problems -> {files[split]}")
    finally:
        engine.close()
    judge = dataclasses.replace(j, source="preferences")
    data = dataclasses.replace(cfg.data, task="judge", judge=judge, path=str(files["train"]),
                               eval_path=str(files["test"]))  # fmt: skip
    return dataclasses.replace(cfg, data=data)


def write_judge_eval(out: Path, results: dict[str, Any]) -> Path:
    path = out / "judge_eval.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return path


def run_judge_eval(cfg: Config) -> dict[str, Any]:
    """``posttrain judge eval``: one judge on held-out pairs -> ``output_dir/judge_eval.json``."""
    from posttrain.recipes.common import model_dir, setup
    from posttrain.train.metrics import console

    out = setup(cfg)
    path = model_dir(cfg).model.path
    assert path is not None
    results = {"model": judge_eval(cfg, path, whole_file=True)}
    written = write_judge_eval(out, results)
    console.print(summary_line("judge", results["model"]) + f" -> {written}", markup=False)
    return results


def train_judge(cfg: Config, resume: bool = False) -> Path:
    """GRPO on the verdict task from ``model.path``: ``output_dir/{metrics.jsonl, checkpoints/, final/}``."""
    from posttrain.recipes.grpo import GRPOStep
    from posttrain.recipes.online import train_online

    cfg = judge_config(cfg)
    if cfg.data.judge.source == "sampled":
        from posttrain.recipes.common import make_output_dir

        make_output_dir(cfg.out)
        cfg = sample_pairs(cfg, cfg.out)
    return train_online(cfg, GRPOStep(cfg), resume)


def run_judge(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), resume: bool = False
) -> dict[str, Any]:
    """``posttrain judge``: [format SFT] -> evaluation -> GRPO -> evaluation (see the module docstring)."""
    from posttrain.models.io import is_model_dir
    from posttrain.recipes.common import model_dir, setup
    from posttrain.recipes.sft import train_sft
    from posttrain.train.metrics import console

    grpo_cfg = judge_config(load_config(path, overrides, stage="grpo"))
    eval_cfg = judge_config(load_config(path, overrides, stage="eval"))
    out = setup(grpo_cfg)
    sampled = grpo_cfg.data.judge.source == "sampled"
    if sampled:  # the pairs, once: every stage reads the same files
        data = sample_pairs(grpo_cfg, out).data
        grpo_cfg, eval_cfg = dataclasses.replace(grpo_cfg, data=data), dataclasses.replace(eval_cfg, data=data)
    start = str(model_dir(grpo_cfg).model.path)
    if "sft" in grpo_cfg.stages:
        sft_cfg = _stage(judge_config(load_config(path, overrides, stage="sft")), out, "sft", start)
        sft_cfg = dataclasses.replace(sft_cfg, data=grpo_cfg.data) if sampled else sft_cfg
        if not (resume and is_model_dir(out / "sft" / "final")):
            train_sft(sft_cfg, resume=resume)
        start = str(out / "sft" / "final")
    results = {"before": judge_eval(eval_cfg, start)}
    final = train_judge(_stage(grpo_cfg, out, "grpo", start), resume=resume)
    results["after"] = judge_eval(eval_cfg, final)
    written = write_judge_eval(out, results)
    for name, m in results.items():
        console.print(summary_line(name, m), markup=False)
    console.print(f"-> {written}")
    return results


def _stage(cfg: Config, out: Path, name: str, model_path: str) -> Config:
    return dataclasses.replace(cfg, output_dir=str(out / name), model=dataclasses.replace(cfg.model, path=model_path))


def self_taught_pairs(cfg: Config, it: int, judge_dir: str) -> list[Any]:
    """Iteration ``it``'s contrasting pairs (``posttrain.judges.self_taught``): built in, or by a generator model."""
    from posttrain.judges.self_taught import PERTURB, arithmetic_contrast, generated_pairs, read_instructions
    from posttrain.rewards.judge import JudgeModel
    from posttrain.seeds import derive_seed
    from posttrain.tasks.arithmetic import ArithmeticTask

    j, seed = cfg.data.judge, derive_seed(cfg.seed, it, 12)
    rng = random.Random(seed)
    if cfg.data.path is None:
        problems = ArithmeticTask(cfg.data.arithmetic).examples("train", j.ste_instructions, seed)
        return [arithmetic_contrast(ex.id, str(ex.prompt), rng) for ex in problems]
    instructions = read_instructions(cfg.data.path)  # before a model loads: a bad row stops the run at once
    questions = rng.sample(instructions, min(j.ste_instructions, len(instructions)))
    generator = j.ste_generator or judge_dir
    s = cfg.sampling
    model = JudgeModel(generator, dtype=cfg.model.dtype, device=cfg.model.device, batch_size=cfg.engine.batch_size,
                       max_new_tokens=s.max_new_tokens, temperature=s.temperature, seed=seed,
                       field="data.judge.ste_generator")  # fmt: skip
    try:
        rewritten = model.generate([PERTURB.replace("{question}", q) for q in questions])
        others = [r[0].strip() if r is not None else "" for r in rewritten]
        replies = model.generate(questions + others)
    finally:
        model.close()
    first = [r[0] if r is not None else None for r in replies]
    pairs = generated_pairs(it, questions, others, first[: len(questions)], first[len(questions) :])
    if not pairs:
        raise DataError(
            f"self-taught iteration {it + 1}: no contrasting pair from {len(questions)} instructions: every x' came "
            "back empty, equal to x or too long, or its response equal to x's (try another data.judge.ste_generator)",
            file=cfg.data.path, field="data.judge.ste_generator",
        )  # fmt: skip
    return pairs


def self_taught_iteration(cfg: Config, it: int, judge_dir: str, out: Path) -> tuple[Path, dict[str, Any]]:
    """One Self-Taught Evaluator iteration: pairs, judgments by the current judge, the right ones kept, SFT.

    Each pair is judged in both orders, ``data.judge.ste_judgments`` samples a prompt at the
    ``sampling`` settings; per prompt one judgment that picks the good response is kept. The
    judge is fine-tuned (``train_sft``, the file's config: ``train``, ``optim``) on the kept
    (prompt, judgment) rows: ``out/judgments.jsonl``. Returns the new judge and the counts.
    """
    from posttrain.judges.self_taught import keep_judgments
    from posttrain.recipes.sft import train_sft
    from posttrain.rewards.judge import JudgeModel
    from posttrain.seeds import derive_seed

    j, s = cfg.data.judge, cfg.sampling
    pairs = self_taught_pairs(cfg, it, judge_dir)
    render = JudgeTask(dataclasses.replace(cfg.data, task="judge", judge=dataclasses.replace(j, source="arithmetic")))
    examples = [ex for k, p in enumerate(pairs) for ex in render.pair_examples(p, k)]
    seed = derive_seed(cfg.seed, it, 13)
    judge = JudgeModel(judge_dir, dtype=cfg.model.dtype, device=cfg.model.device, batch_size=cfg.engine.batch_size,
                       max_new_tokens=s.max_new_tokens, temperature=s.temperature, seed=seed)  # fmt: skip
    K = j.ste_judgments
    try:
        replies = judge.generate([str(ex.prompt) for ex in examples for _ in range(K)])
    finally:
        judge.close()
    rng, rows = random.Random(seed), []
    for i, ex in enumerate(examples):
        texts = [r[0] for r in replies[i * K : (i + 1) * K] if r is not None]
        for kept in keep_judgments(texts, ex.answer, rng):  # type: ignore[arg-type]
            rows.append({"prompt": ex.prompt, "completion": kept})
    counts = {"iteration": it + 1, "pairs": len(pairs), "prompts": len(examples), "kept": len(rows)}
    if not rows:
        raise DataError(
            f"self-taught iteration {it + 1}: none of {len(examples) * K} judgments picked the known winner: "
            "nothing to fine-tune on (sample more with data.judge.ste_judgments, or start from a stronger judge)",
            field="data.judge.ste_judgments",
        )
    out.mkdir(parents=True, exist_ok=True)
    data_file = out / "judgments.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = dataclasses.replace(cfg.data, task="jsonl", path=str(data_file), eval_path=str(data_file))  # train on all
    sft = dataclasses.replace(cfg, data=data, output_dir=str(out / "sft"),
                              model=dataclasses.replace(cfg.model, path=judge_dir))  # fmt: skip
    return train_sft(sft), counts


def run_self_taught(cfg: Config) -> dict[str, Any]:
    """``posttrain judge self-taught``: ``data.judge.ste_iterations`` iterations from ``model.path``.

    After each, the judge is evaluated on held-out pairs with a known winner (the built-in
    arithmetic pairs, or ``data.eval_path`` as preference pairs):
    ``output_dir/self_taught.json``.
    """
    from posttrain.recipes.common import model_dir, setup
    from posttrain.train.metrics import console

    out = setup(cfg)
    judge_dir = str(model_dir(cfg).model.path)
    held_out = cfg if cfg.data.path is None else dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, path=cfg.data.eval_path, eval_path=None))  # fmt: skip
    evaluate = cfg.data.path is None or cfg.data.eval_path is not None
    results: dict[str, Any] = {"start": judge_eval(held_out, judge_dir, whole_file=True) if evaluate else None}
    results["iterations"] = []
    for it in range(cfg.data.judge.ste_iterations):
        final, counts = self_taught_iteration(cfg, it, judge_dir, out / f"iter_{it + 1}")
        judge_dir = str(final)
        counts["judge"] = judge_dir
        counts["eval"] = judge_eval(held_out, judge_dir, whole_file=True) if evaluate else None
        results["iterations"].append(counts)
        line = f"self-taught iteration {it + 1}: kept {counts['kept']} of {counts['prompts']} prompts' judgments"
        console.print(line + (f"; {summary_line('judge', counts['eval'])}" if counts["eval"] else ""), markup=False)
    path = out / "self_taught.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    console.print(f"-> {path}")
    return results
