"""The shared RL loop: semi-online GRPO, the reference's own sync schedule, policy versions,
resume with stale followers, and every advantage / policy loss / KL placement for real steps."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

import posttrain.recipes.grpo as grpo_recipe
from posttrain.cli import main
from posttrain.config import load_config
from posttrain.models.io import load_model
from posttrain.recipes.online import last_sync, should_sync
from posttrain.rollout.torch_engine import TorchEngine
from posttrain.train.metrics import read_metrics
from tests.conftest import FAST
from tests.integration.test_recipes import Crash, crash_after

# every group has a spread of rewards (truncation is penalised) and no group is dropped,
# so every iteration makes exactly one optimiser step on an untrained model
SIGNAL = ("grpo.overlong=penalty", "grpo.overlong_reward=-1.0", "grpo.drop_uniform_groups=false", "optim.lr=1e-2")


def cfg_for(tmp_path: Path, tiny_dir: Path, name: str, *extra: str):
    return load_config(None, [*FAST, f"output_dir={tmp_path / name}", f"model.path={tiny_dir}", *SIGNAL, *extra])


def fingerprint(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten()[:64].clone() for p in model.parameters()])


def iteration_records(path: Path) -> list[dict[str, Any]]:
    return read_metrics(path / "metrics.jsonl")


def test_sync_schedule() -> None:
    assert [should_sync(it, 3) for it in range(7)] == [False, False, False, True, False, False, True]
    assert [last_sync(it, 3) for it in range(7)] == [0, 0, 0, 3, 3, 3, 6]
    assert not any(should_sync(it, 0) for it in range(5)) and last_sync(9, 0) == 0


def test_semi_online_grpo_syncs_its_sampler_exactly_every_sync_every_iterations(
    tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generated: list[torch.Tensor] = []
    trained: list[torch.Tensor] = [fingerprint(load_model(tiny_dir))]
    real_generate, real_step = TorchEngine.generate, grpo_recipe.optimizer_step

    def generate(self: TorchEngine, *args: Any, **kwargs: Any):
        generated.append(fingerprint(self.model))
        return real_generate(self, *args, **kwargs)

    def step(model: torch.nn.Module, *args: Any, **kwargs: Any):
        stats = real_step(model, *args, **kwargs)
        trained.append(fingerprint(model))
        return stats

    monkeypatch.setattr(TorchEngine, "generate", generate)
    monkeypatch.setattr(grpo_recipe, "optimizer_step", step)
    grpo_recipe.train_grpo(cfg_for(tmp_path, tiny_dir, "g", "train.max_steps=7", "rollout.sync_every=3"))
    assert len(generated) == 7 and len(trained) == 8  # one update per iteration
    changed = [k for k in range(1, 7) if not torch.equal(generated[k], generated[k - 1])]
    assert changed == [3, 6]  # synced before iterations 4 and 7, never between
    for k in range(7):
        assert torch.equal(generated[k], trained[last_sync(k, 3)])
    records = iteration_records(tmp_path / "g")
    assert [r["policy_version"] for r in records] == [0, 0, 0, 3, 3, 3, 6]
    # the ratio is taken against the sampler's logprobs: 1 where the sampler was just synced,
    # away from 1 where the trainer has moved on since (the importance weight corrects for it)
    gaps = [r["logprob_gap"] for r in records]
    assert all(gaps[k] < 1e-4 for k in (0, 3, 6)), gaps
    assert all(gaps[k] > 1e-3 for k in (1, 2, 4, 5)), gaps


def test_on_policy_grpo_samples_from_the_policy_itself(tmp_path: Path, tiny_dir: Path) -> None:
    grpo_recipe.train_grpo(cfg_for(tmp_path, tiny_dir, "g", "train.max_steps=3"))
    records = iteration_records(tmp_path / "g")
    assert [r["policy_version"] for r in records] == [0, 1, 2]
    assert all(r["logprob_gap"] < 1e-4 and abs(r["ratio"] - 1) < 1e-4 for r in records)


def test_the_reference_follows_its_own_schedule(tmp_path: Path, tiny_dir: Path) -> None:
    # KL to a reference synced every iteration: at each iteration's (only) update the policy
    # still equals the reference, so the KL is 0; a fixed reference drifts away from the policy
    synced = cfg_for(tmp_path, tiny_dir, "s", "train.max_steps=4", "grpo.kl_coef=0.1", "rollout.ref_sync_every=1")
    grpo_recipe.train_grpo(synced)
    assert all(abs(r["kl"]) < 1e-6 for r in iteration_records(tmp_path / "s"))
    fixed = cfg_for(tmp_path, tiny_dir, "f", "train.max_steps=4", "grpo.kl_coef=0.1")
    grpo_recipe.train_grpo(fixed)
    kl = [r["kl"] for r in iteration_records(tmp_path / "f")]
    assert abs(kl[0]) < 1e-6 and kl[-1] > 1e-4


@pytest.mark.parametrize(
    "extra",
    [
        ("rollout.sync_every=3",),
        ("rollout.ref_sync_every=2", "grpo.kl_coef=0.1"),
        # overlapped rollouts: the batch in flight at the checkpoint is sampled again from the weights it recorded
        pytest.param(("rollout.max_staleness=1",), id="overlapped"),
        # an engine with its own copy of the weights: the checkpoint records what it sampled with
        pytest.param(("rollout.sync_every=3", "engine.backend=ray", "engine.workers=1"), id="ray-semi-online"),
    ],
)
def test_resume_with_stale_followers_equals_an_uninterrupted_run(
    tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch, extra: tuple[str, ...]
) -> None:
    if "engine.backend=ray" in extra:
        pytest.importorskip("ray", reason="the Ray engine needs the ray extra")
    run = ("train.max_steps=6", "train.save_every=2", *extra)
    grpo_recipe.train_grpo(cfg_for(tmp_path, tiny_dir, "a", *run))
    cfg = cfg_for(tmp_path, tiny_dir, "b", *run)
    crash_after(monkeypatch, grpo_recipe, 5)  # after iteration 5: the checkpoint at 4 holds a stale follower
    with pytest.raises(Crash):
        grpo_recipe.train_grpo(cfg)
    monkeypatch.undo()
    grpo_recipe.train_grpo(cfg, resume=True)
    a, b = iteration_records(tmp_path / "a"), iteration_records(tmp_path / "b")
    assert [r["iteration"] for r in b] == [1, 2, 3, 4, 5, 6]
    for key in ("reward", "loss", "logprob_gap", "policy_version"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=1e-5), key


@pytest.mark.parametrize(
    "extra",
    [
        ("grpo.advantage=rloo",),
        ("grpo.advantage=reinforce_pp",),
        ("grpo.advantage=reinforce_pp_baseline",),
        ("grpo.advantage=dr_grpo", "grpo.loss_agg=constant"),
        ("grpo.policy_loss=gspo", "grpo.loss_agg=seq_mean", "train.packing=true"),
        ("grpo.policy_loss=cispo", "grpo.clip_low=1.0"),
        ("grpo.kl_coef=0.05", "grpo.kl_estimator=k2"),
        ("grpo.kl_coef=0.05", "grpo.kl_in=reward", "grpo.kl_estimator=k1"),
        ("grpo.entropy_coef=0.01",),
    ],
)
def test_every_variant_trains_through_the_command_line(tmp_path: Path, tiny_dir: Path, extra: tuple[str, ...]) -> None:
    out = tmp_path / "v"
    args = ["grpo", *FAST, f"model.path={tiny_dir}", f"output_dir={out}", *SIGNAL, "train.max_steps=2", *extra]
    assert main(args) == 0
    records = iteration_records(out)
    assert len(records) == 2
    assert all(r["loss"] is not None and math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in records)
    before, after = load_model(tiny_dir).state_dict(), load_model(out / "final").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    if "grpo.kl_in=reward" in extra:
        assert records[0]["kl_penalty"] == pytest.approx(0.0, abs=1e-5)  # policy = reference at the start
        assert records[-1]["kl_penalty"] != 0.0


@pytest.mark.parametrize("recipe", ["grpo", "dpo"])
def test_a_reward_that_raises_or_hangs_is_counted_and_the_rest_trains(
    tmp_path: Path, tiny_dir: Path, recipe: str
) -> None:
    """On the default engine: the deadline pool ends the hung calls, the failures are counted, never 0."""
    import time

    out = tmp_path / recipe
    reward = "reward.components=[{kind: python, function: tests.unit.reward_fns:flaky_brevity}]"
    mode = ["dpo.mode=online", "dpo.pairs=best_worst"] if recipe == "dpo" else []
    args = [recipe, *FAST, f"model.path={tiny_dir}", f"output_dir={out}", *SIGNAL, "train.max_steps=3",
            "sampling.max_new_tokens=24", reward, "reward.timeout_s=1", *mode]  # fmt: skip
    t0 = time.monotonic()
    assert main(args) == 0
    assert time.monotonic() - t0 < 60  # a hung call costs its deadline, not its 60 s
    records = iteration_records(out)
    assert sum(r["reward_errors"] for r in records) > 0 and sum(r["reward_timeouts"] for r in records) > 0
    assert any(r["loss"] is not None for r in records)  # the samples that were scored trained
    # the mean is over scored samples only: every score is -len <= -1, a 0 for a failure would show
    assert all(r["reward"] <= -1 for r in records if r["reward"] == r["reward"])
    assert all(r["reward/flaky_brevity"] == r["reward"] for r in records if r["reward"] == r["reward"])
    before, after = load_model(tiny_dir).state_dict(), load_model(out / "final").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
