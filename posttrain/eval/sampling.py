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
from posttrain.train.metrics import console


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


def draw_samples(
    engine: RolloutEngine, prompts: list[list[int]], ecfg: EvalConfig, seed: int, cache: SampleCache
) -> list[list[Sample]]:
    """n samples of each prompt rounded up to whole chunks, each chunk from the cache when it is there."""
    n, c = ecfg.samples_per_problem, ecfg.chunk_size
    rows: list[list[Sample]] = [[] for _ in prompts]
    for j in range((n + c - 1) // c):
        chunk = cache.samples(j)
        if chunk is None or len(chunk) != len(prompts):
            sc = ecfg.sampling
            params = SamplingParams(sc.temperature, sc.top_p, sc.top_k, sc.max_new_tokens, seed=derive_seed(seed, 4, j))
            flat = _records(engine.generate([p for p in prompts for _ in range(c)], params))
            chunk = [flat[i * c : (i + 1) * c] for i in range(len(prompts))]
            cache.save_samples(j, chunk)
        for row, got in zip(rows, chunk):
            row += [Sample(*s) for s in got]
    return rows


def greedy_samples(
    engine: RolloutEngine, prompts: list[list[int]], ecfg: EvalConfig, cache: SampleCache
) -> list[Sample]:
    found = cache.value("greedy")
    if found is None or len(found) != len(prompts):
        found = _records(engine.generate(prompts, SamplingParams(0.0, 1.0, 0, ecfg.sampling.max_new_tokens)))
        cache.save_value("greedy", found)
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
) -> tuple[list[list[Check]], list[Check]]:
    """Checks of every sample (chunk by chunk, cached per checker) and of every greedy completion."""
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
    fresh = checker.run(problems, jobs) if jobs else []
    new: dict[int, list[list[Check]]] = {}
    for (j, p, _), check in zip(where, fresh):
        new.setdefault(j, [[] for _ in problems])[p].append(check)
    for j, rows in new.items():
        cache.save_scores(checker.key, j, [_pack(row) for row in rows])
    found.update({j: rows for j, rows in new.items() if j >= 0})
    greedy_rows = new[-1] if -1 in new else [[Check(*c) for c in row] for row in greedy_got or []]
    checks = [[c for j in range(chunks) for c in found[j][p]] for p in range(len(problems))]
    return checks, [row[0] for row in greedy_rows]


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
    }
    return SampleCache(root or Path("."), key, enabled=weights is not None)


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
    samples = draw_samples(engine, prompts, ecfg, seed, cache)
    greedy = greedy_samples(engine, prompts, ecfg, cache)
    checker = TaskChecker(task, cfg.reward.timeout_s, cfg.reward.workers)
    checks, greedy_checks = check_all(checker, problems, samples, greedy, ecfg.chunk_size, cache)
    n = ecfg.samples_per_problem
    result = summarize(
        [ex.id for ex in problems], [row[:n] for row in samples], [row[:n] for row in checks], greedy_checks, seed
    )
    result["sample_generations"] = sample_generations(problems, samples, checks)  # the report shows them
    own = getattr(task, "sample_record", None)  # a task's own numbers over the samples (LIFT: length violations)
    if callable(own):
        result.update(own(problems, [[s.text for s in row[:n]] for row in samples], seed))
    demos = heldout_demos(task, ecfg.heldout_demos, seed)
    name = f"heldout-{digest([[ex.id, ex.prompt, ex.completion] for ex in demos])[:12]}-{batch_size}"
    terms = cache.value(name)
    if terms is None:
        terms = heldout_nll_terms(model, tokenizer, demos, batch_size, cfg.train.logits_chunk) if demos else []
        cache.save_value(name, terms)
    result.update(heldout_summary([(float(s), int(t)) for s, t in terms], seed))
    result.update({"temperature": ecfg.sampling.temperature, "model_hash": cache.key["model"], "checker": checker.key})
    result.update(problems_record(task, problems))
    return result
