"""Reward-model recipe: preference pairs in, a Bradley-Terry scalar reward model out.

The model is the causal LM at ``model.path`` with a fresh one-output value head
(``AutoModelForSequenceClassification(num_labels=1)``, which reads the last
non-padding token); every weight trains. Each step runs chosen and rejected
responses through one forward pass (padded, or packed end to end with
``train.packing``) and applies the Bradley-Terry loss
(``posttrain.algorithms.reward_model``). At the end, pairwise accuracy on the
held-out pairs (``data.eval_path``, a ``test`` split, or a stable hash of the
prompt) goes to ``heldout.json``.

``final/`` is a Hugging Face sequence-classification directory: plain
``AutoModelForSequenceClassification.from_pretrained`` loads it, ``grpo.reward=
reward_model`` uses it as GRPO's reward and ``rollout.scorer=reward_model`` ranks
online DPO's samples with it.
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedModel

from posttrain.algorithms.reward_model import bradley_terry_loss
from posttrain.algorithms.types import LossOutput
from posttrain.config import Config
from posttrain.data.pairs import Layout, PairBatch
from posttrain.device import precision
from posttrain.models.io import save_pretrained_atomic
from posttrain.recipes.common import open_stage
from posttrain.recipes.pairwise import PairLossFn, heldout_metrics, load_pair_data, run_pair_steps, write_heldout
from posttrain.rewards.reward_model import sequence_rewards
from posttrain.rewards.scorers import load_reward_model
from posttrain.train.checkpoint import load_trainer_state
from posttrain.train.loop import build_optimizer
from posttrain.train.metrics import MetricsWriter, console


def rm_loss_fn(model: PreTrainedModel, pad_id: int, mixed_precision: str = "no") -> PairLossFn:
    """The Bradley-Terry loss of a PairBatch, padded or packed (``train.packing``), from one forward pass."""

    def loss_fn(mb: PairBatch) -> LossOutput:
        mb = mb.to(model.device)
        assert mb.tokens.shared is None  # padded or packed (train_rm), never prefix-shared
        with precision(model.device, mixed_precision):
            rewards = sequence_rewards(model, mb.tokens, mb.num_sequences, pad_id)
        return bradley_terry_loss(rewards[mb.chosen], rewards[mb.rejected], mb.weights)

    return loss_fn


def train_rm(cfg: Config, resume: bool = False) -> Path:
    """Train, write ``output_dir/{metrics.jsonl, heldout.json, checkpoints/, final/}``; return ``final``."""
    cfg, out, ckpt, tokenizer, model, max_len = open_stage(
        cfg, resume, lambda path, tok: load_reward_model(path, cfg.model.dtype, tok, cfg.model.device)
    )
    train, test = load_pair_data(cfg, tokenizer, max_len, "rm")
    optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.train.max_steps)
    start = load_trainer_state(ckpt, optimizer, scheduler)["step"] if ckpt else 0
    writer = MetricsWriter(out / "metrics.jsonl", resume_step=start if ckpt else None)
    pad = int(tokenizer.pad_token_id)  # type: ignore[arg-type]
    loss_fn = rm_loss_fn(model, pad, cfg.train.mixed_precision)
    layout: Layout = "pack" if cfg.train.packing else "pad"
    stats = run_pair_steps(
        cfg, "rm", model, tokenizer, train, loss_fn, optimizer, scheduler, start, writer, layout=layout
    )  # fmt: skip
    if test:
        held = heldout_metrics(model, loss_fn, test, cfg.train.micro_batch_size, pad, layout=layout)
        write_heldout(out, writer, "rm", cfg.train.max_steps, held)
        console.print(f"rm: held-out pairwise accuracy {held['accuracy']:.3f} on {len(test)} pairs")
    writer.close()
    final = save_pretrained_atomic(model, tokenizer, out / "final")
    if stats:
        console.print(
            f"rm: {cfg.train.max_steps} steps on {len(train)} pairs, final loss {stats['loss']:.4f} -> {final}"
        )
    return final
