"""DPO recipe: preference pairs in, a fine-tuned HF model out.

With ``dpo.mode=offline`` (the default), DPO on the pairs of ``data.path`` (a file of
``{prompt, chosen, rejected}`` rows): the reference is the initial model, whose
log-probabilities of every pair are computed once before training and cached on
disk (``posttrain.train.reference``). Then each optimiser step runs chosen and
rejected responses through one forward pass (``posttrain.recipes.pairwise.dpo_loss_fn``)
and applies ``dpo.loss`` (``posttrain.algorithms.dpo``). At the end, the loss
and reward accuracy on the held-out pairs go to ``heldout.json``.

With ``dpo.mode=online``, online and semi-online DPO on the task's prompts
(``posttrain.recipes.online_dpo``).

Under torchrun each rank takes its share of every step's pairs, and of the pairs
whose reference log-probabilities it computes.

The math lives in ``posttrain.algorithms.dpo``; this file is wiring only.
"""

from __future__ import annotations

from pathlib import Path

from posttrain.algorithms.dpo import REFERENCE_FREE
from posttrain.config import Config
from posttrain.data.pairs import preference_layout
from posttrain.recipes.launch import open_training
from posttrain.recipes.pairwise import dpo_loss_fn, heldout_metrics, load_pair_data, run_pair_steps, write_heldout
from posttrain.train import distributed
from posttrain.train.checkpoint import load_trainer_state, save_final
from posttrain.train.loop import build_optimizer
from posttrain.train.metrics import MetricsWriter, console
from posttrain.train.reference import cached_reference_logps


def train_dpo(cfg: Config, resume: bool = False) -> Path:
    """``posttrain dpo``: offline on ``data.path``, or online with ``dpo.mode=online``. Returns ``final``."""
    if cfg.dpo.mode == "online":
        from posttrain.recipes.online_dpo import train_online_dpo

        return train_online_dpo(cfg, resume=resume)
    return train_offline_dpo(cfg, resume=resume)


def train_offline_dpo(cfg: Config, resume: bool = False) -> Path:
    """Train on ``data.path``; write ``output_dir/{metrics.jsonl, heldout.json, checkpoints/, final/}``."""
    (cfg, out, ckpt, tokenizer, model, max_len), net = open_training(cfg, resume)
    distributed.check_divisible(cfg.train.batch_size, "train.batch_size")
    train, test = load_pair_data(cfg, tokenizer, max_len, "dpo")
    pad = int(tokenizer.pad_token_id)  # type: ignore[arg-type]
    layout = preference_layout(cfg.train.packing)
    needs_ref = cfg.dpo.loss not in REFERENCE_FREE
    ref_train = cached_reference_logps(cfg, train, pad) if needs_ref else None
    optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.train.max_steps)
    start = load_trainer_state(ckpt, optimizer, scheduler, model)["step"] if ckpt else 0
    writer = MetricsWriter(out / "metrics.jsonl", resume_step=start if ckpt else None)
    loss_fn = dpo_loss_fn(model, cfg.dpo, cfg.train.mixed_precision, net, cfg.train.logits_chunk)
    stats = run_pair_steps(
        cfg, "dpo", model, tokenizer, train, loss_fn, optimizer, scheduler, start, writer, ref_train, net,
        layout=layout,
    )  # fmt: skip
    if test:
        ref_test = cached_reference_logps(cfg, test, pad) if needs_ref else None
        # every rank evaluates all of it through the model itself (under FSDP a forward is collective)
        held_fn = dpo_loss_fn(model, cfg.dpo, cfg.train.mixed_precision, logits_chunk=cfg.train.logits_chunk)
        held = heldout_metrics(model, held_fn, test, cfg.train.micro_batch_size, pad, ref_test, layout)
        if distributed.is_main():
            write_heldout(out, writer, "dpo", cfg.train.max_steps, held)
        console.print(f"dpo: held-out reward accuracy {held['reward_accuracy']:.3f} on {len(test)} pairs")
    writer.close()
    final = save_final(model, tokenizer, out / "final")
    if stats:
        console.print(
            f"dpo: {cfg.train.max_steps} steps on {len(train)} pairs, final loss {stats['loss']:.4f} -> {final}"
        )
    return final
