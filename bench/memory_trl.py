"""Peak memory of one TRL GRPO update, measured as ``bench/memory.py --grpo`` measures posttrain's.

    .bench-venv/bin/python bench/memory_trl.py --one smollm2 trl --batch 8 --seq 512 --checkpointing

``bench/memory.py --grpo --settings full chunk-1024 trl`` runs this in the benchmark
environment (``make bench-env``, where TRL is installed) and prints it in the same table.

One process, as in ``memory.py``'s ``grpo_run``: the model is built from the same config
with random weights, wrapped in a real ``trl.GRPOTrainer`` (so TRL patches its LM head as
it does for training), AdamW's state is allocated (one step on zero gradients), glibc is
told to give freed memory back and ``VmHWM`` is reset. The measured update is what TRL's
``Trainer.training_step`` does with a prepared batch: ``GRPOTrainer.compute_loss`` on the
fields its ``_generate_and_score_completions`` would hand over (prompt and completion ids
and masks, advantages, old and reference logprobs), backward, gradient clipping, AdamW.
TRL's loss then runs its own per-token logprob path (``_get_per_token_logps_and_entropies``
through ``add_fused_lm_head``) with the entropy, clipped ratio (``epsilon`` 0.2,
``epsilon_high`` 0.28), KL to the reference (``beta`` 0.04) and entropy bonus
(``entropy_coef`` 1e-3), at the shapes posttrain's run uses: 16 prompt tokens and
``seq - 16`` completion tokens per sequence.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODEL  # noqa: E402
from memory import GRPO_MODELS, cap_memory, fixed_batch, reset_peak, resident_follows, status_mib  # noqa: E402

from posttrain.models.tiny import build_tiny  # noqa: E402
from posttrain.recipes.common import enable_checkpointing  # noqa: E402

PROMPT = 16  # prompt tokens per sequence, as memory.fixed_batch


def build_trainer(model: Any, args: argparse.Namespace) -> Any:
    """A real GRPOTrainer around ``model``; the tokenizer, prompts and group size only satisfy its constructor.

    The batch size must be even (TRL's smallest group is 2); the update never reads the groups.
    """
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tok_dir = Path(args.root) / "tokenizer-model"
    if not (tok_dir / "config.json").is_file():
        build_tiny(MODEL, tok_dir, seed=0)
    config = GRPOConfig(
        output_dir=str(Path(args.root) / "trl-run"), per_device_train_batch_size=args.batch,
        num_generations=2, max_completion_length=args.seq - PROMPT, learning_rate=1e-6,
        max_grad_norm=1.0, beta=0.04, epsilon=0.2, epsilon_high=0.28, loss_type="dapo", entropy_coef=1e-3,
        use_bias_correction_kl=False, num_iterations=1, use_cpu=True, report_to=[], save_strategy="no", seed=0,
    )  # fmt: skip
    return GRPOTrainer(
        model=model, reward_funcs=[lambda completions, **_: [0.0] * len(completions)], args=config,
        train_dataset=Dataset.from_list([{"prompt": "1+1="}] * args.batch),
        processing_class=AutoTokenizer.from_pretrained(tok_dir),
    )  # fmt: skip


def trl_inputs(args: argparse.Namespace, vocab: int) -> dict[str, torch.Tensor]:
    """The batch ``GRPOTrainer._compute_loss`` reads, with posttrain's run's ids and statistics."""
    batch = fixed_batch(args.batch, args.seq, vocab, 0)
    ids, mask = batch.input_ids, batch.attention_mask
    completion_mask = mask[:, PROMPT:]
    gen = torch.Generator().manual_seed(1)
    uniform = -torch.log(torch.tensor(float(vocab)))
    shape = completion_mask.shape
    return {
        "prompt_ids": ids[:, :PROMPT], "prompt_mask": mask[:, :PROMPT],
        "completion_ids": ids[:, PROMPT:], "completion_mask": completion_mask,
        "old_per_token_logps": (uniform + 0.1 * torch.randn(shape, generator=gen)) * completion_mask,
        "ref_per_token_logps": (uniform + 0.1 * torch.randn(shape, generator=gen)) * completion_mask,
        "advantages": torch.randn(args.batch, generator=gen),
        "num_items_in_batch": completion_mask.sum(),
    }  # fmt: skip


def trl_run(args: argparse.Namespace) -> dict[str, float]:
    """This process is one measured TRL GRPO update of ``args.one`` = (model, "trl")."""
    from transformers import LlamaConfig, LlamaForCausalLM

    name = args.one[0]
    sizes = GRPO_MODELS[name]
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**sizes, pad_token_id=0)).train()
    saved = Path(args.root) / f"trl-model-{name}"  # TRL loads its reference model (beta > 0) from a path
    if not (saved / "config.json").is_file():
        model.save_pretrained(saved)
    model.config._name_or_path = str(saved)
    if args.checkpointing:
        enable_checkpointing(model)
    trainer = build_trainer(model, args)
    model = trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's training loop, which this skips
    optimizer = trainer.create_optimizer()  # the Trainer's AdamW (torch's)
    for p in model.parameters():  # AdamW's state, as from the second step on; zero gradients move nothing
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    inputs = trl_inputs(args, int(sizes["vocab_size"]))

    load_mib, rss_mib = status_mib("VmHWM"), status_mib("VmRSS")
    resident_follows(tensors=True)
    reset = reset_peak()
    t0 = time.perf_counter()
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    peak_mib = status_mib("VmHWM")
    return {
        "load_mib": load_mib,
        "peak_mib": max(peak_mib, load_mib),
        "train_mib": max(0.0, peak_mib - (rss_mib if reset else load_mib)),
        "step_s": time.perf_counter() - t0,
        "loss": float(loss.detach()),
        "checkpointing": float(bool(getattr(model, "is_gradient_checkpointing", False))),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "trainable_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--one", nargs=2, metavar=("MODEL", "SETTING"), required=True)
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--cap-gib", type=float, default=9.0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--root", default=tempfile.mkdtemp())
    args, _ = p.parse_known_args()  # memory.py passes its SFT-only flags too
    torch.set_num_threads(args.threads)
    cap_memory(args.cap_gib)
    print(json.dumps(trl_run(args)))


if __name__ == "__main__":
    main()
