"""Peak memory and step time of SFT under each memory knob, for two model sizes.

    .venv/bin/python bench/memory.py                       # both models, every setting, ~2-3 min on 2 cores
    .venv/bin/python bench/memory.py --models larger --rounds 3 --steps 5

Each (model, setting) runs in a fresh process, so one run's allocator state cannot
hide another's peak. That process loads the model through ``open_stage``, exactly
as a training stage does (LoRA adapters and gradient checkpointing are applied
there), and reads ``VmHWM`` (peak resident memory) and ``VmRSS`` from
``/proc/self/status``. With glibc told to give freed memory back
(``resident_follows``) and the high-water mark reset
(``5 > /proc/self/clear_refs``), it runs two SFT optimiser steps
(``optimizer_step`` with the SFT loss) on one fixed batch of ``--batch``
sequences of ``--seq`` tokens and reads the peak; then ``--steps`` timed steps
with glibc back to its usual large-block threshold. In MiB:

- load: ``VmHWM`` after loading (Python, torch, the weights, load transients);
- peak: the larger of that and the steps' ``VmHWM``;
- train: the steps' peak above the resident size right after loading: what the
  knobs act on (gradients, optimiser state, activations, autocast copies).

Step time is the median of the timed steps.
Figures are medians over ``--rounds`` processes. Settings: ``baseline`` (fp32, one
micro-batch), ``checkpointing`` (``train.gradient_checkpointing``), ``accum``
(``train.micro_batch_size`` = batch / 4), ``bf16`` (``train.mixed_precision``
autocast), ``lora`` (r 16, all linear layers), ``lora+ckpt``.

Models: the quickstart's tiny Llama (``posttrain/experiments/quickstart.yaml``, ~0.8M parameters)
and a larger Llama built from a config (hidden 512, 8 layers, ~25M parameters).
With ``--device cuda`` the figures are ``torch.cuda`` allocated bytes instead of
resident memory (QLoRA is then possible too: ``--settings qlora``).

``--grpo``: the peak of one GRPO update at a real vocabulary instead, full logits
against the chunked head (``train.logits_chunk``):

    .venv/bin/python bench/memory.py --grpo --batch 8 --seq 512 --checkpointing
    .venv/bin/python bench/memory.py --grpo --models qwen-vocab --settings chunk-1024 --batch 8 --seq 512

Models are built from a config with random weights (no download; memory does not
depend on the values): ``smollm2`` is SmolLM2-135M's (Llama, hidden 576, 30 layers,
9 heads, 3 KV heads, intermediate 1536, vocabulary 49,152, tied embeddings), and
``qwen-vocab`` the same body with Qwen2.5's vocabulary of 151,936. A process builds
its model, allocates AdamW's state (one step on zero gradients, which moves
nothing), resets ``VmHWM`` and runs one update: ``token_logprobs`` with the entropy
and its gradient (``grpo.entropy_coef`` > 0) and ``rl_loss`` (PPO clip, KL to a
reference), backward, clipping, AdamW, exactly as ``GRPOStep.loss_fn`` and
``optimizer_step`` do. ``--cap-gib`` bounds each process's address space, so a
setting too large for the machine fails as "over the cap" instead of swapping.

Setting ``trl``: the same update by TRL's ``GRPOTrainer`` (``bench/memory_trl.py``, run
with ``--trl-python``, by default the benchmark environment's from ``make bench-env``),
measured the same way; "update vs TRL" is each row's update figure over TRL's:

    .venv/bin/python bench/memory.py --grpo --models smollm2 --settings full chunk-1024 trl --batch 8 --seq 512 --checkpointing
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODEL, versions  # noqa: E402

from posttrain.config import TinyModelConfig  # noqa: E402
from posttrain.models.tiny import build_tiny  # noqa: E402

MODELS = {
    "quickstart": MODEL,
    "larger": TinyModelConfig(
        hidden_size=512, num_layers=8, num_heads=8, intermediate_size=1536, max_position_embeddings=256
    ),
}
LORA = ["lora.r=16", "lora.alpha=32"]
SETTINGS: dict[str, list[str]] = {
    "baseline": [],
    "checkpointing": ["train.gradient_checkpointing=true"],
    "accum": [],  # micro-batch = batch / 4, set from --batch
    "bf16": ["train.mixed_precision=bf16"],
    "lora": LORA,
    "lora+ckpt": [*LORA, "train.gradient_checkpointing=true"],
    "qlora": [*LORA, "lora.quantize=4bit"],  # CUDA + bitsandbytes only; not in the default list
}
DEFAULT_SETTINGS = ["baseline", "checkpointing", "accum", "bf16", "lora", "lora+ckpt"]
SMOLLM2: dict[str, Any] = {  # SmolLM2-135M's config.json sizes
    "vocab_size": 49152, "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
    "num_key_value_heads": 3, "intermediate_size": 1536, "tie_word_embeddings": True,
    "max_position_embeddings": 8192, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
}  # fmt: skip
GRPO_MODELS: dict[str, dict[str, Any]] = {"smollm2": SMOLLM2, "qwen-vocab": {**SMOLLM2, "vocab_size": 151936}}
GRPO_SETTINGS = {"full": 0, "chunk-1024": 1024, "chunk-256": 256}  # train.logits_chunk
TRL = "trl"  # --grpo setting: TRL's GRPOTrainer update (bench/memory_trl.py, in the benchmark environment)
ROOT = Path(__file__).resolve().parent.parent
TRL_SCRIPT = Path(__file__).resolve().with_name("memory_trl.py")
MIB = 1024 * 1024
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def status_mib(key: str) -> float:
    """A ``/proc/self/status`` field (kB) in MiB."""
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else float("nan")


def reset_peak() -> bool:
    """Reset VmHWM to the current resident size (Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def resident_follows(tensors: bool) -> None:
    """With ``tensors``, make resident memory track live tensors; without, glibc's steady state.

    glibc serves large blocks from its heap once its mmap threshold has adapted
    upwards and keeps freed heap pages resident, so a peak would depend on the order
    of allocations more than on what is alive. A fixed 1 MiB threshold, set before
    the first step, maps every tensor-sized block on its own and unmaps it on free.
    That costs page faults, so the timed steps run at 32 MiB, the most the adaptive
    threshold grows to and where a long run settles.
    """
    with contextlib.suppress(OSError, AttributeError):  # not glibc: measure with the allocator as it is
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 20 if tensors else 32 << 20)


def fixed_batch(batch: int, seq: int, vocab: int, pad: int, seed: int = 0) -> Any:
    """``batch`` sequences of exactly ``seq`` tokens: a 16-token prompt and a completion in the loss."""
    from posttrain.data.batch import collate

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab, (batch, seq), generator=gen).tolist()  # past the special tokens
    return collate([r[:16] for r in ids], [r[16:] for r in ids], pad)


def one_run(args: argparse.Namespace) -> dict[str, float]:
    """This process is one measured run of ``args.one`` = (model, setting)."""
    from posttrain.algorithms.logprobs import token_logprobs
    from posttrain.algorithms.sft import sft_loss
    from posttrain.config import load_config
    from posttrain.device import precision
    from posttrain.recipes.common import open_stage
    from posttrain.train.loop import build_optimizer, optimizer_step

    name, setting = args.one
    root = Path(args.root)
    path = root / f"model-{name}"
    micro = args.batch // 4 if setting == "accum" else args.batch
    overrides = [f"model.path={path}", f"output_dir={root / f'run-{name}-{setting}'}", f"model.device={args.device}",
                 f"train.batch_size={args.batch}", f"train.micro_batch_size={micro}", f"train.max_seq_len={args.seq}",
                 f"train.max_steps={args.steps}", f"threads={args.threads}", *SETTINGS[setting]]  # fmt: skip
    cfg = load_config(None, overrides)
    cuda = args.device.startswith("cuda")
    cfg, _, _, tokenizer, model, _ = open_stage(cfg, resume=False)
    load_mib = torch.cuda.max_memory_allocated() / MIB if cuda else status_mib("VmHWM")
    rss_mib = torch.cuda.memory_allocated() / MIB if cuda else status_mib("VmRSS")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    reset = cuda
    batch = fixed_batch(args.batch, args.seq, len(tokenizer), int(tokenizer.pad_token_id))  # type: ignore[arg-type]
    micro_batches = [batch.select(list(range(i, min(i + micro, args.batch)))) for i in range(0, args.batch, micro)]
    count = float(batch.response_mask.sum())
    optimizer, scheduler = build_optimizer(model, cfg.optim, args.steps + 2)

    def loss_fn(mb: Any) -> Any:
        mb = mb.to(model.device)
        with precision(model.device, cfg.train.mixed_precision):
            logprobs, _ = token_logprobs(model, mb)
        return sft_loss(logprobs, mb.response_mask)

    if not cuda:
        resident_follows(tensors=True)
        reset = reset_peak()
    for _ in range(2):  # measured: the second step runs with the optimiser state allocated
        optimizer_step(model, optimizer, scheduler, micro_batches, loss_fn, count, 1.0)
    peak_mib = torch.cuda.max_memory_allocated() / MIB if cuda else status_mib("VmHWM")
    resident_follows(tensors=False)
    times = []
    for _ in range(args.steps):  # timed
        t0 = time.perf_counter()
        optimizer_step(model, optimizer, scheduler, micro_batches, loss_fn, count, 1.0)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {
        "load_mib": load_mib,
        "peak_mib": max(peak_mib, load_mib),
        # with the reset, the steps' own peak above what loading left resident; without it, above the load's peak
        "train_mib": max(0.0, peak_mib - (rss_mib if reset else load_mib)),
        "step_s": statistics.median(times),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "trainable_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
    }


def grpo_run(args: argparse.Namespace) -> dict[str, float]:
    """This process is one measured GRPO update of ``args.one`` = (model, setting)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from posttrain.algorithms.grpo import LOSS_WEIGHTS, rl_loss
    from posttrain.algorithms.logprobs import token_logprobs
    from posttrain.config import OptimConfig
    from posttrain.recipes.common import enable_checkpointing
    from posttrain.train.loop import build_optimizer, optimizer_step

    name, setting = args.one
    sizes = GRPO_MODELS[name]
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**sizes, pad_token_id=0)).train()
    if args.checkpointing:
        enable_checkpointing(model)
    vocab = int(sizes["vocab_size"])
    batch = fixed_batch(args.batch, args.seq, vocab, 0)
    gen = torch.Generator().manual_seed(1)
    width = batch.response_mask.shape[1]
    mask = batch.response_mask
    uniform = -torch.log(torch.tensor(float(vocab)))  # a random model's logprobs sit near log(1/V)
    batch.extra = {
        "old_logprobs": (uniform + 0.1 * torch.randn(mask.shape, generator=gen)) * mask,
        "ref_logprobs": (uniform + 0.1 * torch.randn(mask.shape, generator=gen)) * mask,
        "advantages": torch.randn(args.batch, 1, generator=gen).expand(-1, width).contiguous(),
        "weights": LOSS_WEIGHTS["token_mean"](mask, args.batch)[0],
    }
    chunk = GRPO_SETTINGS[setting]
    optimizer, scheduler = build_optimizer(model, OptimConfig(lr=1e-6), 10)
    for p in model.parameters():  # AdamW's state, as from the second step on; zero gradients move nothing
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

    def loss_fn(mb: Any) -> Any:
        lp, ent = token_logprobs(model, mb, 1.0, with_entropy=True, entropy_grad=True, chunk=chunk)
        x = mb.extra
        return rl_loss(policy_loss="ppo_clip", logprobs=lp, old_logprobs=x["old_logprobs"],
                       advantages=x["advantages"], response_mask=mb.response_mask, weights=x["weights"],
                       clip_low=0.2, clip_high=0.28, ref_logprobs=x["ref_logprobs"], kl_coef=0.04,
                       entropy=ent, entropy_coef=1e-3)  # fmt: skip

    load_mib, rss_mib = status_mib("VmHWM"), status_mib("VmRSS")
    resident_follows(tensors=True)
    reset = reset_peak()
    t0 = time.perf_counter()
    stats = optimizer_step(model, optimizer, scheduler, [batch], loss_fn, float(mask.sum()), 1.0)
    peak_mib = status_mib("VmHWM")
    return {
        "load_mib": load_mib,
        "peak_mib": max(peak_mib, load_mib),
        "train_mib": max(0.0, peak_mib - (rss_mib if reset else load_mib)),
        "step_s": time.perf_counter() - t0,
        "loss": float(stats["loss"]),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "trainable_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def cap_memory(gib: float) -> None:
    """Bound this process's address space: a setting too large fails here, not in the machine's swap."""
    import resource

    limit = int(gib * 1024**3)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def grpo_table(results: dict[tuple[str, str], list[dict[str, float]]], args: argparse.Namespace) -> str:
    lines = [
        f"GRPO update (PPO clip + KL + entropy bonus), micro-batch {args.batch} x {args.seq} tokens "
        f"(16 prompt + {args.seq - 16} completion), fp32, gradient checkpointing {'on' if args.checkpointing else 'off'}, "
        f"{args.threads} threads; resident memory (VmHWM) in MiB, medians of {args.rounds} run(s); {versions()}"
        + (f"; {trl_version(args.trl_python)}" if TRL in args.settings else ""),
        "",
        "| model | vocab | setting | params (M) | load | peak | update | update vs full | update vs TRL | loss |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model in args.models:
        base = results.get((model, "full"))
        base_train = statistics.median(r["train_mib"] for r in base) if base else None
        peer = results.get((model, TRL))
        peer_train = statistics.median(r["train_mib"] for r in peer) if peer else None
        for setting in args.settings:
            runs = results.get((model, setting))
            vocab = GRPO_MODELS[model]["vocab_size"]
            if not runs:
                lines.append(f"| {model} | {vocab} | {setting} | | | | over the cap or failed | | | |")
                continue
            m = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            ratio = f"{m['train_mib'] / base_train:.2f}x" if base_train else ""
            vs_trl = f"{m['train_mib'] / peer_train:.2f}x" if peer_train else ""
            lines.append(
                f"| {model} | {vocab} | {setting} | {m['params_m']:.1f} | {m['load_mib']:.0f} | {m['peak_mib']:.0f} | "
                f"{m['train_mib']:.0f} | {ratio} | {vs_trl} | {m['loss']:.6f} |"
            )
    return "\n".join(lines)


def trl_version(python: str) -> str:
    """The TRL version of the benchmark environment, which the table's own process does not import."""
    done = subprocess.run([python, "-c", "import trl; print(trl.__version__)"], capture_output=True, text=True)
    return f"trl {done.stdout.strip()}" if done.returncode == 0 else "trl not importable"


def table(results: dict[tuple[str, str], list[dict[str, float]]], args: argparse.Namespace) -> str:
    unit = "CUDA allocated" if args.device.startswith("cuda") else "resident (VmHWM)"
    lines = [
        f"SFT, batch {args.batch} x {args.seq} tokens, {args.steps} steps, {args.threads} threads, device "
        f"{args.device}; memory {unit} in MiB, medians of {args.rounds} run(s); {versions()}",
        "",
        "| model | setting | params (M) | trainable (M) | load | peak | train | train vs baseline | step (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model in args.models:
        base = results.get((model, "baseline"))
        base_train = statistics.median(r["train_mib"] for r in base) if base else None
        for setting in args.settings:
            runs = results.get((model, setting))
            if not runs:
                lines.append(f"| {model} | {setting} | | | | | failed | | |")
                continue
            m = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            ratio = f"{m['train_mib'] / base_train:.2f}x" if base_train else ""
            lines.append(
                f"| {model} | {setting} | {m['params_m']:.1f} | {m['trainable_m']:.2f} | {m['load_mib']:.0f} | "
                f"{m['peak_mib']:.0f} | {m['train_mib']:.0f} | {ratio} | {m['step_s']:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grpo", action="store_true", help="one GRPO update at a real vocabulary, full vs chunked head")
    p.add_argument("--models", nargs="+", choices=[*MODELS, *GRPO_MODELS], default=None)
    p.add_argument("--settings", nargs="+", choices=[*SETTINGS, *GRPO_SETTINGS, TRL], default=None)
    p.add_argument("--trl-python", default=str(ROOT / ".bench-venv" / "bin" / "python"),
                   help="--grpo: the interpreter of the environment with TRL (make bench-env), for setting trl")  # fmt: skip
    p.add_argument("--checkpointing", action="store_true", help="--grpo: train.gradient_checkpointing")
    p.add_argument("--cap-gib", type=float, default=9.0, help="--grpo: address-space cap of each measured process")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--root", default=tempfile.mkdtemp())
    p.add_argument("--one", nargs=2, metavar=("MODEL", "SETTING"), help=argparse.SUPPRESS)
    args = p.parse_args()
    models, settings = (GRPO_MODELS, {**GRPO_SETTINGS, TRL: 0}) if args.grpo else (MODELS, SETTINGS)
    args.models = args.models or list(models)
    args.settings = args.settings or (list(GRPO_SETTINGS) if args.grpo else DEFAULT_SETTINGS)
    wrong = [x for x in [*args.models, *args.settings] if x not in models and x not in settings]
    if wrong:
        p.error(f"not a{' --grpo' if args.grpo else 'n SFT'} model or setting: {', '.join(wrong)}")
    if args.one:
        torch.set_num_threads(args.threads)
        if args.grpo:
            cap_memory(args.cap_gib)
        print(json.dumps(grpo_run(args) if args.grpo else one_run(args)))
        return
    common = ["--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps), "--threads",
              str(args.threads), "--device", args.device, "--root", args.root]  # fmt: skip
    if args.grpo:
        common += ["--grpo", "--cap-gib", str(args.cap_gib), *(["--checkpointing"] if args.checkpointing else [])]
    for model in [] if args.grpo else args.models:  # built here, so no run's load figure holds the build
        path = Path(args.root) / f"model-{model}"
        if not (path / "config.json").is_file():
            build_tiny(MODELS[model], path, seed=0)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for model in args.models:
            for setting in args.settings:
                peer = args.grpo and setting == TRL
                script = [args.trl_python, str(TRL_SCRIPT)] if peer else [sys.executable, __file__]
                cmd = [*script, "--one", model, setting, *common]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"{model} {setting}: {(done.stderr.strip().splitlines() or ['failed'])[-1]}", file=sys.stderr)
                    continue
                results.setdefault((model, setting), []).append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(grpo_table(results, args) if args.grpo else table(results, args))


if __name__ == "__main__":
    main()
