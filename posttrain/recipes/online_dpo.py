"""Online and semi-online DPO as a step on the shared RL loop (``posttrain.recipes.online``).

After "Bridging Offline and Online Reinforcement Learning for LLMs" (Lanchantin et
al. 2025, arXiv 2506.21495). Each iteration is one optimiser step:

1. the loop samples ``rollout.samples_per_prompt`` responses of each of
   ``rollout.prompts_per_step`` prompts and the reward (``reward``) scores them;
2. ``dpo.pairs`` turns each prompt's scores into pairs (``posttrain.algorithms.pairs``);
   prompts without a preference are skipped and counted; a sample whose reward
   raised or timed out takes part in no pair;
3. one DPO step on those pairs (``posttrain.algorithms.dpo``), normalised by the
   step's pair weight.

``dpo.pairs=divpo`` (DivPO, Lanchantin et al. 2025) picks each pool's pair by
quality and diversity (``dpo.divpo_criterion``, ``divpo_split``, ``divpo_threshold``).

The sampler is synced from the trainer before every ``rollout.sync_every``-th step:
s = 1 is online DPO, s > 1 semi-online, s = 0 never (offline DPO on the initial
policy's samples, drawn lazily). The reference is the initial policy
(``rollout.ref_sync_every=0``, the DPO default) or follows the trainer every
``rollout.ref_sync_every`` steps; equal to ``sync_every`` it is the sampler itself,
the paper's "synced reference". The paper reports that verifiable online DPO without
reference sync collapsed in length on their models; both are offered.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from posttrain.algorithms.dpo import REFERENCE_FREE
from posttrain.algorithms.logprobs import response_sums
from posttrain.algorithms.pairs import build_pairs
from posttrain.config import Config
from posttrain.data.pairs import PairBatch, collate_pairs, preference_layout
from posttrain.device import precision
from posttrain.errors import ConfigError
from posttrain.eval.diversity import logprob_rarity, ngram_distance, word_frequency_rarity
from posttrain.recipes.online import Run, train_online
from posttrain.recipes.pairwise import dpo_loss_fn
from posttrain.records import ScoredGroups
from posttrain.seeds import derive_seed
from posttrain.train import distributed
from posttrain.train.loop import optimizer_step


def scored_pairs(
    rule: str,
    scores: list[float | None],
    G: int,
    rng: random.Random,
    diversity: list[float] | None = None,
    divpo: tuple[str, float] = ("absolute", 0.5),
) -> tuple[list[tuple[int, int, float]], dict[str, int]]:
    """Pairs ``(chosen row, rejected row, weight)`` among the samples that have a reward.

    A sample whose reward raised or timed out takes part in no pair: it is neither
    better nor worse than any other. A prompt left with fewer than two scored samples
    is skipped as ``unscored``. With every sample scored this is ``build_pairs`` itself.
    """
    kept = [[(i + j, s) for j, s in enumerate(scores[i : i + G]) if s is not None] for i in range(0, len(scores), G)]
    usable = [k for k in kept if len(k) >= 2]
    div = None if diversity is None else [[diversity[i] for i, _ in k] for k in usable]  # divpo: per sample
    pairset = build_pairs(rule, [[s for _, s in k] for k in usable], rng, div, *divpo)
    pairs = [(usable[i][p.chosen][0], usable[i][p.rejected][0], p.weight) for i, p in pairset.pairs]
    return pairs, {**pairset.skipped, "unscored": len(kept) - len(usable)}


Embed = Callable[[list[list[str]]], list[list[float]]]  # pools' texts -> each response's embedding diversity


def divpo_diversity(criterion: str, groups: ScoredGroups, embed: Embed | None = None) -> list[float]:
    """Each sample's diversity within its prompt's pool, for the ``divpo`` pair rule (larger: rarer).

    ``logprob`` reads the sampler's per-token logprobs: the policy's own at the
    sampler's version (the trainer's when on-policy), under the sampling temperature.
    ``embedding`` calls ``embed`` on every pool's texts at once
    (``posttrain.eval.embedding_diversity``).
    """
    G = groups.group_size
    pools = [groups.completions[i : i + G] for i in range(0, len(groups.completions), G)]
    if criterion == "embedding":
        assert embed is not None, "the embedding criterion needs a model to embed with"
        return [d for row in embed([[c.text for c in pool] for pool in pools]) for d in row]
    out: list[float] = []
    for pool in pools:
        if criterion == "logprob":
            out += logprob_rarity([c.logprobs for c in pool])
        elif criterion == "word_frequency":
            out += word_frequency_rarity([c.text for c in pool])
        else:
            out += ngram_distance([c.text for c in pool])
    return out


@torch.no_grad()
def add_reference(ref: torch.nn.Module, batches: list[PairBatch], mixed_precision: str, logits_chunk: int = 0) -> None:
    for mb in batches:
        device: torch.device = ref.device  # type: ignore[assignment]  # a model, or the LoRA policy's BaseView
        tokens = mb.tokens.to(device)
        with precision(device, mixed_precision):
            mb.ref_logps = response_sums(ref, tokens, mb.num_sequences, logits_chunk)[0]


class DPOStep:
    stage = "dpo"
    writer_key = "step"
    doom_groups = False  # a failed sample is left out of the pairs; its prompt's other samples still pair

    def __init__(self, cfg: Config) -> None:
        self.needs_reference = cfg.dpo.loss not in REFERENCE_FREE
        self._embedder: tuple[Any, Any] | None = None  # dpo.divpo_embedding_model, loaded at first use

    def embed(self, run: Run) -> Embed:
        """DivPO's ``embedding`` criterion: the policy at its current weights, or ``dpo.divpo_embedding_model``."""
        from posttrain.eval.embedding_diversity import embedding_diversity

        cfg = run.cfg
        model, tokenizer = run.model, run.tokenizer
        if cfg.dpo.divpo_embedding_model is not None:
            if self._embedder is None:
                from posttrain.models.io import load_model, load_tokenizer

                path = cfg.dpo.divpo_embedding_model
                self._embedder = (load_model(path, cfg.model.dtype, cfg.model.device).eval(), load_tokenizer(path))
            model, tokenizer = self._embedder
        mbs = cfg.train.micro_batch_size
        return lambda pools: embedding_diversity(model, tokenizer, pools, mbs)

    def optimizer_steps(self, cfg: Config) -> int:
        return 1

    def __call__(self, run: Run, it: int, groups: ScoredGroups, rollout: dict[str, Any]) -> dict[str, Any]:
        cfg = run.cfg
        G = groups.group_size
        scores = [None if s != s else float(s) for s in groups.scores.flatten().tolist()]  # NaN: missing
        rng = random.Random(derive_seed(cfg.seed, it, 6) + distributed.rank())
        diversity = None
        if cfg.dpo.pairs == "divpo":
            embed = self.embed(run) if cfg.dpo.divpo_criterion == "embedding" else None
            diversity = divpo_diversity(cfg.dpo.divpo_criterion, groups, embed)
        divpo = (cfg.dpo.divpo_split, cfg.dpo.divpo_threshold)
        pairs, skipped = scored_pairs(cfg.dpo.pairs, scores, G, rng, diversity, divpo)
        counts = {"pairs": len(pairs), **{f"skipped_{k}": v for k, v in skipped.items()}}
        if distributed.active():
            keys = sorted(counts)
            counts = {k: int(v) for k, v in zip(keys, distributed.all_sum([counts[k] for k in keys]))}
        record: dict[str, Any] = {**rollout, "step": it + 1, **counts}
        if not record["pairs"]:  # no prompt with a preference: no update, the schedule still advances
            with warnings.catch_warnings():  # torch warns when the scheduler steps without the optimiser
                warnings.simplefilter("ignore", UserWarning)
                run.scheduler.step()
            run.writer.write({**record, "loss": None, "skipped": True})
            return record
        sequences = [(c.prompt_ids, c.completion_ids) for c in groups.completions]
        mbs = cfg.train.micro_batch_size
        tok = run.tokenizer
        pad = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)  # type: ignore[arg-type]
        layout = preference_layout(cfg.train.packing)  # a prompt's samples in one row, the prompt once
        micro = [collate_pairs(sequences, pairs[i : i + mbs], pad, layout=layout) for i in range(0, len(pairs), mbs)]
        if run.reference is not None:
            add_reference(run.reference, micro, cfg.train.mixed_precision, cfg.train.logits_chunk)
        loss_fn = dpo_loss_fn(run.model, cfg.dpo, cfg.train.mixed_precision, run.net, cfg.train.logits_chunk)
        count = sum(w for _, _, w in pairs)
        stats = optimizer_step(run.net, run.optimizer, run.scheduler, micro, loss_fn, count, cfg.train.grad_clip)
        record.update(stats)
        run.writer.write(record)
        return record


def train_online_dpo(cfg: Config, resume: bool = False) -> Path:
    """Train, write ``output_dir/{metrics.jsonl, checkpoints/, final/}``; return ``final``.

    Under torchrun (DDP only: a stale sampler is a whole copy of the policy) each rank
    samples every world-th prompt with its own seed and builds pairs within its
    prompts; the step and the logged numbers are summed over ranks.
    """
    if distributed.launched_world() > 1 and cfg.dist.strategy == "fsdp":
        raise ConfigError("online DPO keeps whole copies of the policy: use dist.strategy=ddp", field="dist.strategy")
    return train_online(cfg, DPOStep(cfg), resume)
