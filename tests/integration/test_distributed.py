"""Two processes under torchrun (CPU, gloo) against one process with the same global batch.

Two launches serve every test: the CLI itself (`torchrun -m posttrain sft`, DDP)
and tests/dist_run.py, which runs the other scenarios in one process group.

Tolerances: the two-process run sums the same terms in another order (per rank,
then over ranks), so losses agree to float32 rounding, not bit for bit. Measured on
the 2-core CPU: SFT losses within 1.3e-7 relative (DDP and FSDP2), final weights
within 6e-7; offline DPO losses within 5e-8 relative, weights within 4e-6 (lr 3e-3,
where Adam's first steps move each weight by about lr whatever the gradient's size,
so rounding in a near-zero gradient shows); GRPO (DDP and FSDP2, the one-process run
drawing each rank's samples with its seed) losses within 2e-7 relative, grad norms
within 1e-7, weights within 7e-8. The asserts allow rtol 1e-5 / atol 1e-6 on losses
and atol 2e-5 on weights. The uneven-micro-batch step came out bit-equal.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import posttrain.recipes.dpo as dpo_recipe
import posttrain.recipes.grpo as grpo_recipe
import posttrain.recipes.online as online_loop
import posttrain.recipes.sft as sft_recipe
from posttrain.cli import main as cli_main
from posttrain.config import DistConfig, load_config
from posttrain.errors import ConfigError
from posttrain.models.io import load_model
from posttrain.recipes.launch import open_training
from posttrain.rollout.base import ENGINES, Completion, SamplingParams
from posttrain.rollout.torch_engine import TorchEngine
from posttrain.train import distributed
from posttrain.train.loop import build_optimizer, optimizer_step
from posttrain.train.metrics import read_metrics
from tests.conftest import FAST
from tests.dist_run import GRPO, SFT, UNEVEN, UNEVEN_OPTIM, config, fixed_rollouts, grpo_fixed_loss

ROOT = Path(__file__).resolve().parents[2]
LOSS_TOL = {"rel": 1e-5, "abs": 1e-6}
WEIGHT_ATOL = 2e-5
CLI_SFT = [*FAST, "threads=1", "train.max_steps=4", "train.save_every=2"]
SCENARIOS = ["sft_ddp", "sft_fsdp", "resume_gathered", "resume_sharded", "dpo_ddp", "grpo_ddp", "grpo_fsdp"]
SCENARIOS += ["online_ddp", "uneven_ddp", "uneven_fsdp"]


def torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`torchrun --nproc_per_node=2 -m posttrain sft`, building its own tiny base model; (output_dir, stderr)."""
    out = tmp_path_factory.mktemp("cli") / "sft"
    done = torchrun("-m", "posttrain", "sft", *CLI_SFT, f"output_dir={out}")
    return out, done.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path, prefs: Path) -> Path:
    out = tmp_path_factory.mktemp("dist")
    torchrun("-m", "tests.dist_run", str(out), str(tiny_dir), str(prefs), *SCENARIOS)
    return out


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run / "metrics.jsonl") if r.get("loss") is not None]


def assert_same_weights(a: Path, b: Path, atol: float = WEIGHT_ATOL) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst <= atol, worst


def test_cli_ddp_two_processes_equal_one_process(cli_run: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = cli_run
    one = sft_recipe.train_sft(load_config(None, [*CLI_SFT, f"output_dir={tmp_path / 'one'}"]))
    two, ref = read_metrics(out / "metrics.jsonl"), read_metrics(tmp_path / "one" / "metrics.jsonl")
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in ref], **LOSS_TOL)
    assert [r["grad_norm"] for r in two] == pytest.approx([r["grad_norm"] for r in ref], rel=1e-5)
    assert [r["tokens"] for r in two] == [r["tokens"] for r in ref]  # the global batch, not one rank's
    assert_same_weights(out / "final", one)
    AutoModelForCausalLM.from_pretrained(out / "final")  # final/ is a plain HF directory


def test_only_rank_zero_writes(cli_run: tuple[Path, str]) -> None:
    out, stderr = cli_run
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    model = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    model |= {f for f in {"chat_template.jinja", "special_tokens_map.json"} if f"final/{f}" in files}
    step = model | {"trainer_state.pt"}
    expected = {"config.json", "metrics.jsonl", "checkpoints/latest"}
    expected |= {f"base/{f}" for f in model} | {f"final/{f}" for f in model}
    expected |= {f"checkpoints/step_00000{s}/{f}" for s in (2, 4) for f in step}
    assert files == expected
    assert stderr.count("sft: 4 steps") == 1  # the summary, printed by rank 0 alone


def test_sft_fsdp_two_processes_equal_one_process(runs: Path, tiny_dir: Path, tmp_path: Path) -> None:
    one = sft_recipe.train_sft(config(tmp_path, str(tiny_dir), "one", *SFT))
    for name in ("sft_ddp", "sft_fsdp"):
        assert losses(runs / name) == pytest.approx(losses(tmp_path / "one"), **LOSS_TOL)
        assert_same_weights(runs / name / "final", one)
    sharded = runs / "sft_fsdp" / "checkpoints" / "step_000002"
    assert (sharded / "dcp").is_dir() and not (sharded / "model.safetensors").exists()
    with pytest.raises(ConfigError, match="sharded checkpoint .* resume it under torchrun"):
        sft_recipe.train_sft(config(runs, str(tiny_dir), "sft_fsdp", *SFT), resume=True)


@pytest.mark.parametrize(("name", "straight"), [("resume_gathered", "sft_ddp"), ("resume_sharded", "sft_fsdp")])
def test_resume_equals_uninterrupted_two_process_run(runs: Path, name: str, straight: str) -> None:
    records = read_metrics(runs / name / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # killed in step 4, resumed from step 2
    assert losses(runs / name) == pytest.approx(losses(runs / straight), **LOSS_TOL)
    assert_same_weights(runs / name / "final", runs / straight / "final", atol=1e-6)


def test_offline_dpo_ddp_equals_one_process(runs: Path, tiny_dir: Path, prefs: Path, tmp_path: Path) -> None:
    cfg = config(tmp_path, str(tiny_dir), "one", f"data.path={prefs}", "train.max_steps=3", "optim.lr=3e-3")
    one = dpo_recipe.train_dpo(cfg)
    assert losses(runs / "dpo_ddp") == pytest.approx(losses(tmp_path / "one"), **LOSS_TOL)
    assert_same_weights(runs / "dpo_ddp" / "final", one)
    held = json.loads((runs / "dpo_ddp" / "heldout.json").read_text())
    assert held == pytest.approx(json.loads((tmp_path / "one" / "heldout.json").read_text()), rel=1e-4, abs=1e-5)
    # the same reference caches (train and held-out pairs) as one process writes, and nothing else
    names = [sorted(p.name for p in (run / "ref_cache").iterdir()) for run in (runs / "dpo_ddp", tmp_path / "one")]
    assert names[0] == names[1]


class RankShares:
    """The in-process engine drawing each rank's share of the groups with that rank's seed, as two processes do.

    Under torchrun rank r samples groups r, r + world, ... with the iteration's seed + r.
    Drawing the same completions here leaves the one-process run differing from the
    two-process one only in how the update and the metrics are summed.
    """

    capabilities = ENGINES["torch"]

    def __init__(self, engine: TorchEngine, world: int, group: int) -> None:
        self.engine, self.model, self.world, self.group = engine, engine.model, world, group

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        assert sampling.seed is not None
        G, n = self.group, len(prompts) // self.group
        groups: list[list[Completion]] = [[] for _ in range(n)]
        for rank in range(self.world):
            mine = range(rank, n, self.world)
            share = [p for i in mine for p in prompts[i * G : (i + 1) * G]]
            drawn = self.engine.generate(share, dataclasses.replace(sampling, seed=sampling.seed + rank))
            for k, i in enumerate(mine):
                groups[i] = drawn[k * G : (k + 1) * G]
        return [c for g in groups for c in g]

    def sync_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        raise AssertionError("the engine samples from the trained model itself: nothing to sync")

    def close(self) -> None:
        self.engine.close()


def test_grpo_two_processes_equal_one_process(
    runs: Path, tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(tmp_path, str(tiny_dir), "one", *GRPO)
    real = online_loop.build_engine

    def build_engine(*args: Any) -> RankShares:
        engine = real(*args)
        assert isinstance(engine, TorchEngine)
        return RankShares(engine, world=2, group=cfg.rollout.samples_per_prompt)

    monkeypatch.setattr(online_loop, "build_engine", build_engine)
    one = grpo_recipe.train_grpo(cfg)
    ref = read_metrics(tmp_path / "one" / "metrics.jsonl")
    # the truncation penalty gives the rewards a spread, so each iteration makes a real update
    assert all(r["loss"] is not None and r["grad_norm"] > 0 for r in ref)
    base = load_file(str(tiny_dir / "model.safetensors"))
    assert max(float((base[k] - v).abs().max()) for k, v in load_file(str(one / "model.safetensors")).items()) > 1e-4
    for name in ("grpo_ddp", "grpo_fsdp"):
        two = read_metrics(runs / name / "metrics.jsonl")
        assert [r["iteration"] for r in two] == [1, 2]  # one record per step: rank 0's
        for key in ("completion_len", "truncated_frac", "groups_dropped"):  # the same samples, counted over ranks
            assert [r[key] for r in two] == pytest.approx([r[key] for r in ref], rel=1e-6), key
        assert [r["reward"] for r in two] == pytest.approx([r["reward"] for r in ref], rel=1e-6)
        assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in ref], **LOSS_TOL)
        assert [r["grad_norm"] for r in two] == pytest.approx([r["grad_norm"] for r in ref], rel=1e-5)
        assert_same_weights(runs / name / "final", one)
        AutoModelForCausalLM.from_pretrained(runs / name / "final")


def test_online_dpo_runs_on_two_processes(runs: Path) -> None:
    records = read_metrics(runs / "online_ddp" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]  # one record per step: rank 0's
    assert all(0 <= r["truncated_frac"] <= 1 for r in records)
    assert [r["pairs"] for r in records] == [4, 4]  # 2 prompts on each rank, summed
    AutoModelForCausalLM.from_pretrained(runs / "online_ddp" / "final")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_uneven_micro_batches_equal_one_process(runs: Path, tiny_dir: Path, strategy: str) -> None:
    """Rank 1 holds one micro-batch to rank 0's three, then none: the steps equal one process over all rows."""
    model = load_model(tiny_dir, device="cpu")
    optimizer, scheduler = build_optimizer(model, UNEVEN_OPTIM, 2)
    batch, loss_fn, ref = fixed_rollouts(), grpo_fixed_loss(model), []
    for split in UNEVEN:
        rows = split[0] + split[1]
        micro = [batch.select(rows[i : i + 2]) for i in range(0, len(rows), 2)]
        count = float(batch.response_mask[rows].sum())
        ref.append(optimizer_step(model, optimizer, scheduler, micro, loss_fn, count, 1.0)["loss"])
    run = runs / f"uneven_{strategy}"
    assert torch.load(run / "losses.pt") == pytest.approx(ref, rel=1e-6, abs=1e-7)
    two = load_file(str(run / "model.safetensors"))
    assert all(torch.allclose(two[k], v, atol=1e-6) for k, v in model.state_dict().items() if k in two)


def test_a_process_group_of_one_is_not_distributed_training() -> None:
    """vLLM's in-process engine starts a group of one; the trainer must stay a single process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        assert not distributed.active()
        assert (distributed.rank(), distributed.world()) == (0, 1)
        assert distributed.all_sum([2.0, 3.0]) == [2.0, 3.0]
    finally:
        torch.distributed.destroy_process_group()


def test_bad_launches_fail_with_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ConfigError, match="dist.backend: nccl needs CUDA"):
        distributed.init(DistConfig(backend="nccl"), "cpu")
    with pytest.raises(ConfigError, match="MASTER_ADDR.*unset: launch with torchrun"):
        distributed.init(DistConfig(), "cpu")
    assert cli_main(["eval"]) == 2
    assert capsys.readouterr().err.strip().endswith("torchrun launches only sft, dpo, grpo")
    monkeypatch.setattr(distributed, "world", lambda: 2)
    with pytest.raises(ConfigError, match="train.batch_size: 15 does not split over 2 processes"):
        distributed.check_divisible(15, "train.batch_size")
    # engines that serve one trainer process are refused before any model is loaded
    monkeypatch.setattr(distributed, "init", lambda *args: True)
    monkeypatch.setattr(distributed, "active", lambda: True)
    for backend in ("ray", "vllm"):
        with pytest.raises(ConfigError, match=f"engine.backend: the {backend} engine serves one trainer process"):
            open_training(load_config(None, [f"engine.backend={backend}"]), resume=False)
