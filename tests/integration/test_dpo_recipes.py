"""A few real steps of offline and online DPO and of reward-model training on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import posttrain.recipes.dpo as dpo_recipe
import posttrain.recipes.online_dpo as online
import posttrain.train.reference as reference
from posttrain.config import ArithmeticConfig, RewardComponentConfig, RewardConfig, load_config
from posttrain.errors import TrainingError
from posttrain.models.io import load_model
from posttrain.recipes.online import last_sync
from posttrain.recipes.rm import train_rm
from posttrain.rewards.registry import build_reward
from posttrain.rollout.torch_engine import TorchEngine
from posttrain.tasks.arithmetic import ArithmeticTask
from posttrain.train.metrics import read_metrics
from tests.conftest import FAST
from tests.integration.test_recipes import Crash, crash_after, weights

LN2 = math.log(2.0)


def cfg_for(tmp_path: Path, tiny_dir: Path, name: str, *extra: str):
    return load_config(None, [*FAST, f"output_dir={tmp_path / name}", f"model.path={tiny_dir}", *extra])


def losses(path: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(path / "metrics.jsonl") if r.get("loss") is not None]


def test_offline_dpo_lowers_loss_and_caches_the_reference(
    tmp_path: Path, tiny_dir: Path, prefs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = (f"data.path={prefs}", "train.max_steps=16", "optim.lr=3e-3", f"dpo.cache_dir={tmp_path / 'cache'}")
    final = dpo_recipe.train_dpo(cfg_for(tmp_path, tiny_dir, "a", *extra))
    first = read_metrics(tmp_path / "a" / "metrics.jsonl")
    assert first[0]["loss"] == pytest.approx(LN2, abs=1e-5)  # policy = reference at step 1
    for key in ("stage", "step", "loss", "reward_accuracy", "reward_margin", "chosen_logps", "rejected_logps"):
        assert key in first[0], key
    a = losses(tmp_path / "a")
    assert sum(a[-4:]) / 4 < sum(a[:4]) / 4 - 0.01
    assert (
        first[-1]["heldout_reward_accuracy"]
        == json.loads((tmp_path / "a" / "heldout.json").read_text())["reward_accuracy"]
    )
    before, after = weights(tiny_dir), weights(final)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # a second run on the same model and data reads the reference log-probs from the cache
    assert len(list((tmp_path / "cache").glob("ref_logps-*.pt"))) == 2  # train and held-out pairs

    def no_reference(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the reference was recomputed")

    monkeypatch.setattr(reference, "sequence_logps", no_reference)
    dpo_recipe.train_dpo(cfg_for(tmp_path, tiny_dir, "b", *extra))
    assert losses(tmp_path / "b") == pytest.approx(a, rel=1e-6)


def test_offline_dpo_resume_equals_uninterrupted(
    tmp_path: Path, tiny_dir: Path, prefs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = (f"data.path={prefs}", "train.max_steps=6", "train.save_every=2", "optim.lr=3e-3", "dpo.loss=ipo")
    dpo_recipe.train_dpo(cfg_for(tmp_path, tiny_dir, "a", *extra))
    cfg = cfg_for(tmp_path, tiny_dir, "b", *extra)
    import posttrain.recipes.pairwise as pairwise

    crash_after(monkeypatch, pairwise, 5)
    with pytest.raises(Crash):
        dpo_recipe.train_dpo(cfg)
    monkeypatch.undo()
    dpo_recipe.train_dpo(cfg, resume=True)
    assert losses(tmp_path / "b") == pytest.approx(losses(tmp_path / "a"), rel=1e-5)


def test_simpo_needs_no_reference(tmp_path: Path, tiny_dir: Path, prefs: Path) -> None:
    dpo_recipe.train_dpo(cfg_for(tmp_path, tiny_dir, "s", f"data.path={prefs}", "train.max_steps=2", "dpo.loss=simpo"))
    assert not (tmp_path / "s" / "ref_cache").exists()
    assert len(losses(tmp_path / "s")) == 2


def python_reward(name: str) -> str:
    """The override that makes ``tests.rewards.<name>`` the whole reward (a ``kind: python`` component)."""
    return f"reward.components=[{{kind: python, function: tests.rewards:{name}}}]"


# a reward with a preference on every prompt: shorter completions score higher
SHORTER = python_reward("shorter_is_better")


def fingerprint(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


ONLINE = (
    "dpo.mode=online",
    "rollout.prompts_per_step=4",
    "rollout.samples_per_prompt=4",
    "optim.lr=3e-3",
    "dpo.pairs=best_worst",
)


def test_generator_syncs_exactly_every_sync_every_steps(
    tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generated: list[torch.Tensor] = []
    trained: list[torch.Tensor] = [fingerprint(load_model(tiny_dir))]
    real_generate, real_step = TorchEngine.generate, online.optimizer_step

    def generate(self: TorchEngine, *args: Any, **kwargs: Any):
        generated.append(fingerprint(self.model))
        return real_generate(self, *args, **kwargs)

    def step(model: torch.nn.Module, *args: Any, **kwargs: Any):
        stats = real_step(model, *args, **kwargs)
        trained.append(fingerprint(model))
        return stats

    monkeypatch.setattr(TorchEngine, "generate", generate)
    monkeypatch.setattr(online, "optimizer_step", step)
    cfg = cfg_for(tmp_path, tiny_dir, "o", "train.max_steps=7", "rollout.sync_every=3", *ONLINE, SHORTER)
    online.train_online_dpo(cfg)
    assert len(generated) == 7 and len(trained) == 8  # every step had pairs and updated
    changed = [k for k in range(1, 7) if not torch.equal(generated[k], generated[k - 1])]
    assert changed == [3, 6]  # synced before steps 4 and 7: after every 3rd optimiser step, never between
    for k in range(7):
        assert torch.equal(generated[k], trained[last_sync(k, 3)])
    records = read_metrics(tmp_path / "o" / "metrics.jsonl")
    assert [r["policy_version"] for r in records] == [0, 0, 0, 3, 3, 3, 6]


def test_online_dpo_moves_its_loss(tmp_path: Path, tiny_dir: Path) -> None:
    learn = ("train.max_steps=12", "rollout.sync_every=1", *ONLINE, "optim.lr=1e-2", SHORTER)
    final = online.train_online_dpo(cfg_for(tmp_path, tiny_dir, "f", *learn))
    records = read_metrics(tmp_path / "f" / "metrics.jsonl")
    assert records[0]["loss"] == pytest.approx(LN2, abs=1e-5)
    assert all(r["pairs"] == 4 for r in records)
    loss, length = [r["loss"] for r in records], [r["completion_len"] for r in records]
    assert max(abs(x - LN2) for x in loss[1:]) > 0.02  # the loss moves off ln 2 as the policy leaves the reference
    assert sum(length[-3:]) / 3 < sum(length[:3]) / 3 - 2  # towards what the reward wants: brevity
    before, after = weights(tiny_dir), weights(final)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # a reference synced with the generator every step: each step's loss is evaluated at pi = pi_ref
    online.train_online_dpo(cfg_for(tmp_path, tiny_dir, "s", *learn, f"rollout.ref_sync_every={1}"))
    assert losses(tmp_path / "s") == pytest.approx([LN2] * 12, abs=1e-4)


@pytest.mark.parametrize(
    ("reward", "reason", "why"),
    [
        ("always_one", "skipped_all_correct", "every sample right"),
        ("always_zero", "skipped_all_wrong", "every sample wrong"),
    ],
)
def test_online_dpo_skips_and_counts_prompts_without_a_preference(
    tmp_path: Path, tiny_dir: Path, reward: str, reason: str, why: str
) -> None:
    """Every step skipped: counted in the records, final/ saved, and the run ends in a one-line error."""
    with pytest.raises(TrainingError) as err:
        online.train_online_dpo(
            cfg_for(tmp_path, tiny_dir, "o", "train.max_steps=2", *ONLINE[:4], python_reward(reward))
        )
    final = tmp_path / "o" / "final"
    assert str(err.value).startswith(
        f"dpo: 2 iterations and not one optimiser update: no prompt gave a preference pair (8 with {why}), "
        f"0 of 32 samples unscored; mean reward {1 if reward == 'always_one' else 0}; {final} is the starting model."
    )
    records = read_metrics(tmp_path / "o" / "metrics.jsonl")
    assert [(r[reason], r["pairs"], r["loss"], r["skipped"]) for r in records] == [(4, 0, None, True)] * 2
    before, after = weights(tiny_dir), weights(final)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_online_dpo_resume_equals_uninterrupted(
    tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = ("train.max_steps=6", "train.save_every=3", "rollout.sync_every=2", *ONLINE, SHORTER)
    online.train_online_dpo(cfg_for(tmp_path, tiny_dir, "a", *extra))
    cfg = cfg_for(tmp_path, tiny_dir, "b", *extra)
    real_step = online.optimizer_step
    crash_after(monkeypatch, online, 4)  # killed in step 5; the checkpoint at 3 holds the generator of step 2
    with pytest.raises(Crash):
        online.train_online_dpo(cfg)
    monkeypatch.setattr(online, "optimizer_step", real_step)
    online.train_online_dpo(cfg, resume=True)
    a, b = read_metrics(tmp_path / "a" / "metrics.jsonl"), read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [r["reward"] for r in b] == [r["reward"] for r in a]  # the same samples: the same generator
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-5)


def test_offline_dpo_without_a_heldout_split_trains_on_every_pair(
    tmp_path: Path, tiny_dir: Path, prefs: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    extra = (f"data.path={prefs}", "train.max_steps=2", "data.heldout_fraction=0")
    dpo_recipe.train_dpo(cfg_for(tmp_path, tiny_dir, "a", *extra))
    said = capfd.readouterr().err
    rows = read_metrics(tmp_path / "a" / "metrics.jsonl")
    assert not (tmp_path / "a" / "heldout.json").exists()
    assert [r["step"] for r in rows] == [1, 2] and not any(k.startswith("heldout_") for r in rows for k in r)
    assert "dpo: 2 steps on 96 pairs" in said  # the whole file; the default split holds about a tenth out
    assert rows[0]["loss"] == pytest.approx(LN2, abs=1e-5)


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path, prefs: Path) -> Path:
    out = tmp_path_factory.mktemp("rm")
    cfg = load_config(
        None, [*FAST, f"output_dir={out}", f"model.path={tiny_dir}", f"data.path={prefs}", "train.max_steps=24",
               "optim.lr=2e-3"],
    )  # fmt: skip
    return train_rm(cfg)


def test_reward_model_lowers_loss_and_loads_in_transformers(reward_model: Path, tiny_dir: Path) -> None:
    out = reward_model.parent
    a = losses(out)
    assert len(a) == 24 and sum(a[-4:]) / 4 < sum(a[:4]) / 4 - 0.02
    held = json.loads((out / "heldout.json").read_text())
    assert 0.0 <= held["accuracy"] <= 1.0 and "loss" in held
    model = AutoModelForSequenceClassification.from_pretrained(reward_model)
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None
    before, after = weights(tiny_dir), weights(reward_model)
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)
    task = ArithmeticTask(ArithmeticConfig(num_operands=2, digits=1))
    ex = task.examples("test", 1, 0)[0]
    component = RewardComponentConfig("reward_model", path=str(reward_model))
    scorer = build_reward(RewardConfig([component]), task, dtype="float32", device="cpu")
    try:
        assert scorer.pool is None  # a reward model runs in this process, batched: no workers
        report = scorer.score([ex, ex], ["#1", "#1"])
    finally:
        scorer.close()
    scores = report.scores
    assert scores[0] == pytest.approx(scores[1], abs=1e-5) and isinstance(scores[0], float)
    assert report.components == {"reward_model": scores} and report.unscored == 0


def test_reward_model_serves_grpo_and_online_dpo(tmp_path: Path, tiny_dir: Path, reward_model: Path) -> None:
    from posttrain.recipes.grpo import train_grpo

    rm = f"{reward_model}"
    train_grpo(
        cfg_for(tmp_path, tiny_dir, "g", "train.max_steps=1", f"reward.components=[{{kind: reward_model, path: {rm}}}]")
    )
    record = read_metrics(tmp_path / "g" / "metrics.jsonl")[0]
    assert record["reward"] not in (0.0, 1.0) and record["loss"] is not None  # real-valued scores, an update
    dpo = ("train.max_steps=2", f"reward.components=[{{kind: reward_model, path: {rm}}}]", *ONLINE)
    online.train_online_dpo(cfg_for(tmp_path, tiny_dir, "d", *dpo))
    assert all(r["pairs"] == 4 for r in read_metrics(tmp_path / "d" / "metrics.jsonl"))


def test_cli_rejects_bad_preference_rows(tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from posttrain.cli import main

    data = tmp_path / "p.jsonl"
    data.write_text(
        json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"})
        + "\n"
        + json.dumps({"prompt": "a", "rejected": "c"})
        + "\n"
    )
    for command in ("dpo", "rm"):
        args = [command, *FAST, f"model.path={tiny_dir}", f"data.path={data}", f"output_dir={tmp_path / 'o'}"]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert (
            err == f"posttrain: error: {data}:2: chosen: missing field 'chosen' (expected {{prompt, chosen, rejected}})"
        )
    assert main(["dpo", *FAST, f"model.path={tiny_dir}", f"output_dir={tmp_path / 'o'}"]) == 2
    assert "data.path" in capsys.readouterr().err
