"""Evaluation of one model: many samples per held-out problem, scored honestly, cached.

For each checkpoint: ``eval.samples_per_problem`` (n) samples of each of
``eval.num_problems`` test problems (a seeded sample of the task's test split, or
all of it when there are fewer; the record says how many it used, of how many, from
which file) at the evaluation temperature give pass@k for
every power of two k <= n (unbiased estimator) and maj@k, with bootstrap
intervals over problems; one greedy sample per problem gives greedy accuracy;
the held-out demonstrations give the mean per-token NLL (the generalisation loss
that predicts post-RL results better than pass@1, per Kang et al. 2025,
arXiv:2510.01624).

Samples are drawn in chunks: chunk j holds samples j*c .. (j+1)*c - 1 of every
problem (c = ``eval.chunk_size``) and is drawn with a seed derived from
(seed, j) in one generate call of its own. Chunk j is therefore the same
whatever n is, so with the cache (``posttrain.eval.cache``) a rerun draws
nothing and n = 128 after n = 64 draws only chunks 8..15, giving exactly what a
fresh n = 128 evaluation gives. When n is not a multiple of c the last chunk is
drawn whole and its first samples used, for the same reason.

Answers are checked by ``posttrain.eval.checking``: a check that times out or
raises leaves its problem unscored and counted, never scored 0.

Both phases are shown by ``posttrain.train.metrics.phase`` (rate, ETA; plain lines off a
terminal): sampling advances after every generation batch of the engine, checking after
every batch of whole problems. Neither changes a sample, a check or the cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from posttrain.algorithms.logprobs import token_logprobs
from posttrain.config import Config, EvalConfig
from posttrain.data.batch import collate
from posttrain.data.tokenize import encode_example, encode_prompt, fit_prompts
from posttrain.errors import DataError
from posttrain.eval.cache import SampleCache, digest, model_hash
from posttrain.eval.checking import Check, TaskChecker
from posttrain.eval.report import sample_generations
from posttrain.eval.summary import Sample, heldout_summary, summarize
from posttrain.models.io import context_length
from posttrain.rollout.base import RolloutEngine, SamplingParams
from posttrain.rollout.torch_engine import SAMPLER_VERSION, TorchEngine
from posttrain.seeds import derive_seed
from posttrain.tasks.base import Example, Task
from posttrain.train.metrics import Advance, console, phase


@torch.no_grad()
def heldout_nll_terms(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    batch_size: int,
    logits_chunk: int = 0,
) -> list[tuple[float, int]]:
    """(summed NLL, completion tokens) of each demonstration, for the mean and its interval.

    ``logits_chunk``: ``train.logits_chunk`` (``posttrain.algorithms.logprobs.token_logprobs``).
    """
    ctx = context_length(model)
    pairs = [encode_example(tokenizer, ex, ctx) for ex in examples]
    pad = int(tokenizer.pad_token_id)  # type: ignore[arg-type]
    terms: list[tuple[float, int]] = []
    was_training = model.training
    model.eval()
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s : s + batch_size]
        batch = collate([p for p, _ in chunk], [c for _, c in chunk], pad)
        batch = batch.to(model.device)
        logprobs, _ = token_logprobs(model, batch, chunk=logits_chunk)
        nll = -(logprobs * batch.response_mask).sum(-1)
        terms += [(float(v), int(t)) for v, t in zip(nll.tolist(), batch.response_mask.sum(-1).tolist())]
    model.train(was_training)
    return terms


GENERATED_PROBLEMS = 200  # eval.num_problems=0 on a task generated on demand (it has no "all")


def eval_problems(task: Task, num_problems: int, seed: int) -> list[Example]:
    """``num_problems`` test problems drawn with ``seed``; 0: all of a file's, 200 of a generated task's."""
    if num_problems == 0 and not callable(getattr(task, "count", None)):
        num_problems = GENERATED_PROBLEMS
    return task.examples("test", num_problems or None, seed)


def problems_record(task: Task, problems: list[Example]) -> dict[str, Any]:
    """How many problems the evaluation used, of how many its test data holds, and where they came from."""
    count = getattr(task, "count", None)
    return {
        "num_problems_used": len(problems),
        "num_problems_available": count("test") if callable(count) else None,  # None: generated on demand
        "eval_file": getattr(task, "test_file", None),  # None: the built-in task
    }


def heldout_demos(task: Task, n: int, seed: int) -> list[Example]:
    return [ex for ex in task.examples("test", n, seed) if ex.completion is not None] if n else []


def _records(completions: list[Any]) -> list[list[Any]]:
    return [[c.text, len(c.completion_ids), c.finish_reason] for c in completions]


def _no_progress(n: float = 1, info: str | None = None) -> None:
    """An ``Advance`` that shows nothing."""


def _generate(engine: RolloutEngine, prompts: list[list[int]], params: SamplingParams, advance: Advance) -> list[Any]:
    """``engine.generate``, advancing the progress after each generation batch.

    The in-process engine reports each of its batches (``TorchEngine.on_batch``) during
    the same single call, so the samples are exactly those of a call without it. Other
    engines generate in one opaque call, reported when it returns.
    """
    if not isinstance(engine, TorchEngine):
        completions = engine.generate(prompts, params)
        advance(len(prompts))
        return completions
    before, engine.on_batch = engine.on_batch, advance
    try:
        return engine.generate(prompts, params)
    finally:
        engine.on_batch = before


def sampling_total(ecfg: EvalConfig, num_prompts: int) -> int:
    """The sequences an evaluation draws, cached or not: whole chunks of samples, then one greedy per prompt."""
    n, c = ecfg.samples_per_problem, ecfg.chunk_size
    return ((n + c - 1) // c) * c * num_prompts + num_prompts


def draw_samples(
    engine: RolloutEngine,
    prompts: list[list[int]],
    ecfg: EvalConfig,
    seed: int,
    cache: SampleCache,
    advance: Advance = _no_progress,
) -> list[list[Sample]]:
    """n samples of each prompt rounded up to whole chunks, each chunk from the cache when it is there."""
    n, c = ecfg.samples_per_problem, ecfg.chunk_size
    rows: list[list[Sample]] = [[] for _ in prompts]
    for j in range((n + c - 1) // c):
        chunk = cache.samples(j)
        if chunk is None or len(chunk) != len(prompts):
            sc = ecfg.sampling
            params = SamplingParams(
                sc.temperature,
                sc.top_p,
                sc.top_k,
                sc.max_new_tokens,
                seed=derive_seed(seed, 4, j),
                adaptive=sc.adaptive,
            )
            flat = _records(_generate(engine, [p for p in prompts for _ in range(c)], params, lambda k: advance(k, "")))
            chunk = [flat[i * c : (i + 1) * c] for i in range(len(prompts))]
            cache.save_samples(j, chunk)
        else:
            advance(c * len(prompts), info="cached")
        for row, got in zip(rows, chunk):
            row += [Sample(*s) for s in got]
    return rows


def greedy_samples(
    engine: RolloutEngine,
    prompts: list[list[int]],
    ecfg: EvalConfig,
    cache: SampleCache,
    advance: Advance = _no_progress,
) -> list[Sample]:
    found = cache.value("greedy")
    if found is None or len(found) != len(prompts):
        params = SamplingParams(0.0, 1.0, 0, ecfg.sampling.max_new_tokens)
        found = _records(_generate(engine, prompts, params, lambda k: advance(k, info="greedy")))
        cache.save_value("greedy", found)
    else:
        advance(len(prompts), info="greedy cached")
    return [Sample(*s) for s in found]


def _pack(checks: list[Check]) -> list[list[Any]]:
    return [[c.status, c.answer, c.score, c.error] for c in checks]


def check_all(
    checker: TaskChecker,
    problems: list[Example],
    samples: list[list[Sample]],
    greedy: list[Sample],
    chunk_size: int,
    cache: SampleCache,
    batch_size: int = 256,
    advance: Advance = _no_progress,
) -> tuple[list[list[Check]], list[Check]]:
    """Checks of every sample (chunk by chunk, cached per checker) and of every greedy completion.

    The checks to run go to the checker in batches of whole problems, about ``batch_size``
    each, with ``advance`` after each; a problem's checks stay in one batch, so a failed
    check skips the same later checks as one call over all would (``TaskChecker.run``).
    """
    chunks = len(samples[0]) // chunk_size
    found: dict[int, list[list[Check]]] = {}
    for j in range(chunks):
        got = cache.scores(checker.key, j)
        if got is not None and len(got) == len(problems) and all(len(row) == chunk_size for row in got):
            found[j] = [[Check(*c) for c in row] for row in got]
    greedy_got = cache.scores(checker.key, -1)
    if greedy_got is not None and len(greedy_got) != len(problems):
        greedy_got = None
    jobs: list[tuple[int, str]] = []
    where: list[tuple[int, int, int]] = []  # (chunk or -1 for greedy, problem, position in the chunk)
    for p in range(len(problems)):  # problem by problem, so a failed problem skips its remaining checks
        for j in range(chunks):
            if j not in found:
                row = samples[p][j * chunk_size : (j + 1) * chunk_size]
                jobs += [(p, s.text) for s in row]
                where += [(j, p, i) for i in range(len(row))]
        if greedy_got is None:
            jobs.append((p, greedy[p].text))
            where.append((-1, p, 0))
    cached = len(problems) * (chunks * chunk_size + 1) - len(jobs)
    if cached:
        advance(cached, info="cached")
    fresh: list[Check] = []
    for lo, hi in _problem_spans([p for p, _ in jobs], batch_size):
        fresh += checker.run(problems, jobs[lo:hi])
        advance(hi - lo, info="")
    new: dict[int, list[list[Check]]] = {}
    for (j, p, _), check in zip(where, fresh):
        new.setdefault(j, [[] for _ in problems])[p].append(check)
    for j, rows in new.items():
        cache.save_scores(checker.key, j, [_pack(row) for row in rows])
    found.update({j: rows for j, rows in new.items() if j >= 0})
    greedy_rows = new[-1] if -1 in new else [[Check(*c) for c in row] for row in greedy_got or []]
    checks = [[c for j in range(chunks) for c in found[j][p]] for p in range(len(problems))]
    return checks, [row[0] for row in greedy_rows]


def _problem_spans(owners: list[int], size: int) -> list[tuple[int, int]]:
    """(start, end) spans of ``owners`` (each job's problem, grouped) of about ``size`` jobs, cut only between problems."""
    spans, lo = [], 0
    for i in range(1, len(owners) + 1):
        if i == len(owners) or (i - lo >= size and owners[i] != owners[i - 1]):
            spans.append((lo, i))
            lo = i
    return spans


def sample_cache(
    ecfg: EvalConfig,
    root: Path | None,
    model_dir: str | None,
    model: PreTrainedModel,
    engine: Any,
    problems: list[Example],
    seed: int,
    batch_size: int,
) -> SampleCache:
    """The cache entry for these samples; a disabled one when caching is off or the model has no directory.

    ``model_dir`` must hold the weights the engine's model was loaded from: the entry is keyed by its files.
    """
    weights = None
    if ecfg.cache and root is not None and model_dir is not None:
        weights = model_hash(model_dir, root / "hashes.json")
    key: dict[str, Any] = {
        "model": weights,
        "dtype": str(model.dtype),
        "device": model.device.type,
        "decode": "static" if getattr(engine, "fast", False) else "generic",  # two code paths, two sets of numerics
        "sampler": SAMPLER_VERSION,
        "torch": torch.__version__,
        "problems": digest([[ex.id, ex.prompt, ex.answer] for ex in problems]),
        "temperature": ecfg.sampling.temperature,
        "top_p": ecfg.sampling.top_p,
        **({"top_k": ecfg.sampling.top_k} if ecfg.sampling.top_k else {}),  # absent when off: earlier caches stay valid
        "max_new_tokens": ecfg.sampling.max_new_tokens,
        "seed": seed,
        "chunk_size": ecfg.chunk_size,
        "batch_size": batch_size,
        **({"engine": type(engine).__name__} if not isinstance(engine, TorchEngine) else {}),
        **(_head_key(ecfg, model_dir) if ecfg.sampling.adaptive != "off" else {}),  # absent when off, as top_k
    }
    return SampleCache(root or Path("."), key, enabled=weights is not None)


def _head_key(ecfg: EvalConfig, model_dir: str | None) -> dict[str, Any]:
    """Adaptive sampling's part of the key: the pick rule and a hash of the head's weights and settings.

    Samples of the same model drawn at a fixed temperature, or with another head, are other entries.
    """
    head = model_hash(model_dir, patterns=("temperature_head*",)) if model_dir is not None else None
    return {"adaptive": ecfg.sampling.adaptive, "head": head}


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    cfg: Config,
    model_dir: str | None = None,
    cache_dir: Path | None = None,
    engine: RolloutEngine | None = None,
) -> dict[str, Any]:
    """The evaluation record of one model (see the module docstring).

    ``cfg.eval`` says what to evaluate, ``cfg.engine.batch_size`` how many sequences a
    generation batch holds, ``cfg.reward`` the answer checks' deadline pool. ``engine``
    samples (any ``RolloutEngine`` holding ``model``'s weights, e.g. vLLM on a GPU); the
    in-process sampler over ``model`` when not given. Samples and scores are cached under
    ``cache_dir`` when it and ``model_dir`` (the directory ``model`` was loaded from) are
    given and ``eval.cache`` is on.
    """
    ecfg, batch_size = cfg.eval, cfg.engine.batch_size
    problems = eval_problems(task, ecfg.num_problems, cfg.seed)
    if not problems:
        raise DataError("the test split is empty: nothing to evaluate", file=getattr(task, "path", task.name))
    ctx = context_length(model)
    prompts = [encode_prompt(tokenizer, task.prompt(ex)) for ex in problems]
    problems, prompts, too_long = fit_prompts(problems, prompts, ecfg.sampling.max_new_tokens, ctx,
                                              cfg.data.truncation, "eval.sampling.max_new_tokens")  # fmt: skip
    if too_long:  # the record's num_problems_used counts only the problems evaluated
        console.print(
            f"eval: skipped {too_long} problems with no room for eval.sampling.max_new_tokens (data.truncation)"
        )
    if not problems:
        raise DataError(
            f"every test problem's prompt leaves no room for eval.sampling.max_new_tokens="
            f"{ecfg.sampling.max_new_tokens} in the model's context of {ctx}",
            file=getattr(task, "path", task.name),
            field="data.truncation",
        )
    engine = engine or TorchEngine(model, tokenizer, batch_size=batch_size)
    seed = cfg.seed
    cache = sample_cache(ecfg, cache_dir, model_dir, model, engine, problems, seed, batch_size)
    with phase("eval sampling (sequences)", total=sampling_total(ecfg, len(prompts))) as advance:
        samples = draw_samples(engine, prompts, ecfg, seed, cache, advance)
        greedy = greedy_samples(engine, prompts, ecfg, cache, advance)
    checker = TaskChecker(task, cfg.reward.timeout_s, cfg.reward.workers)
    checks_total = len(problems) * (len(samples[0]) + 1)
    with phase("eval checking (answers)", total=checks_total) as advance:
        checks, greedy_checks = check_all(checker, problems, samples, greedy, ecfg.chunk_size, cache,
                                          batch_size, advance)  # fmt: skip
    n = ecfg.samples_per_problem
    result = summarize(
        [ex.id for ex in problems], [row[:n] for row in samples], [row[:n] for row in checks], greedy_checks, seed
    )
    result["sample_generations"] = sample_generations(problems, samples, checks)  # the report shows them
    own = getattr(task, "sample_record", None)  # a task's own numbers over the samples (LIFT: length violations)
    if callable(own):
        result.update(own(problems, [[s.text for s in row[:n]] for row in samples], seed))
    scored = getattr(task, "checked_record", None)  # a task's own numbers over the checks (AggLM: hard vs easy)
    if callable(scored):
        result.update(scored(problems, [row[:n] for row in checks], greedy_checks, seed))
    demos = heldout_demos(task, ecfg.heldout_demos, seed)
    name = f"heldout-{digest([[ex.id, ex.prompt, ex.completion] for ex in demos])[:12]}-{batch_size}"
    terms = cache.value(name)
    if terms is None:
        terms = heldout_nll_terms(model, tokenizer, demos, batch_size, cfg.train.logits_chunk) if demos else []
        cache.save_value(name, terms)
    result.update(heldout_summary([(float(s), int(t)) for s, t in terms], seed))
    result.update({"temperature": ecfg.sampling.temperature, "model_hash": cache.key["model"], "checker": checker.key})
    if ecfg.sampling.adaptive != "off":  # the temperature head's picks, not eval.sampling.temperature
        result.update({"adaptive": ecfg.sampling.adaptive, "head_hash": cache.key["head"]})
    result.update(problems_record(task, problems))
    return result
