"""Ray rollout workers and the reward pool, on a local Ray instance with 2 CPU workers.

Ray is an optional extra (``pip install 'posttrain[ray]'``); CI installs it, and
without it these tests skip, saying so.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'posttrain[ray]'")

import posttrain.recipes.grpo as grpo_recipe  # noqa: E402
import posttrain.recipes.online_dpo as online  # noqa: E402
from posttrain.config import Config, EngineConfig, RewardComponentConfig, RewardConfig, load_config  # noqa: E402
from posttrain.errors import ConfigError, RolloutError  # noqa: E402
from posttrain.models.io import load_model, load_tokenizer  # noqa: E402
from posttrain.rewards.pool import RewardPool  # noqa: E402
from posttrain.rewards.registry import build_reward  # noqa: E402
from posttrain.rollout.base import Completion, SamplingParams  # noqa: E402
from posttrain.rollout.factory import build_engine, sync_engine  # noqa: E402
from posttrain.rollout.ray_engine import RayEngine, RolloutWorker, share_bounds  # noqa: E402
from posttrain.rollout.torch_engine import TorchEngine  # noqa: E402
from posttrain.tasks.arithmetic import ArithmeticTask  # noqa: E402
from posttrain.tasks.base import Example  # noqa: E402
from posttrain.train.metrics import read_metrics  # noqa: E402
from tests.conftest import FAST  # noqa: E402

TEXTS = ["1+2=?\n", "7-3+4=?\n", "9=?\n", "12+30-5+1=?\n", "5*5=?\n"]  # 5 prompts: shares of 2 and 3


def python_reward(name: str) -> str:
    """The override that makes ``tests.rewards.<name>`` the reward: on Ray, the reward actors import it by name."""
    return f"reward.components=[{{kind: python, function: tests.rewards:{name}}}]"


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # the rewards and the worker double below travel by value: no worker imports this (heavy) module
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


@pytest.fixture(scope="module")
def local(tiny_dir: Path) -> TorchEngine:
    return TorchEngine(load_model(tiny_dir), load_tokenizer(tiny_dir))


@pytest.fixture(scope="module")
def engine(tiny_dir: Path) -> Iterator[RayEngine]:
    eng = RayEngine(tiny_dir, workers=2, sync_timeout_s=60, generate_timeout_s=60)
    yield eng
    eng.close()


def prompts(local: TorchEngine) -> list[list[int]]:
    return [local.tokenizer(t)["input_ids"] for t in TEXTS]


def ids(cs: list[Completion]) -> list[list[int]]:
    return [c.completion_ids for c in cs]


def test_ray_engine_keeps_the_engine_contract(engine: RayEngine, local: TorchEngine) -> None:
    ps = prompts(local)
    sp = SamplingParams(temperature=1.0, max_new_tokens=8, seed=7)
    outs = engine.generate(ps, sp)
    assert [c.prompt_ids for c in outs] == ps  # one per prompt, in order
    for c in outs:
        assert len(c.logprobs) == len(c.completion_ids) <= 8
        assert c.finish_reason == ("length" if len(c.completion_ids) == 8 else "stop")
    assert ids(engine.generate(ps, sp)) == ids(outs)  # same seed, same draw
    # worker 0 keeps the call's seed, so its share is what the local engine draws for it
    first = share_bounds(len(ps), 2)[1]
    assert ids(outs[:first]) == ids(local.generate(ps[:first], sp))
    greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
    remote, here = engine.generate(ps, greedy), local.generate(ps, greedy)
    assert ids(remote) == ids(here)
    for a, b in zip(remote, here):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_sync_weights_changes_what_the_workers_generate(engine: RayEngine, local: TorchEngine) -> None:
    ps, greedy = prompts(local), SamplingParams(temperature=0.0, max_new_tokens=8)
    before = ids(engine.generate(ps, greedy))
    perturbed = copy.deepcopy(local.model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    engine.sync_weights(perturbed.state_dict())
    after = ids(engine.generate(ps, greedy))
    assert after == ids(TorchEngine(perturbed, local.tokenizer).generate(ps, greedy))
    assert after != before
    engine.sync_weights(local.model.state_dict())  # back, for the tests that follow
    assert ids(engine.generate(ps, greedy)) == before


def test_the_factory_builds_ray_workers_that_hold_and_follow_the_trainer(tiny_dir: Path, local: TorchEngine) -> None:
    """engine.* reaches the workers; the first sync and every later one send the trainer's weights as host copies."""
    cfg = Config(engine=EngineConfig(backend="ray", workers=1, batch_size=2, sync_timeout_s=60, generate_timeout_s=60))
    trainer = copy.deepcopy(local.model)
    with torch.no_grad():
        for p in trainer.parameters():  # weights the model directory does not hold, as after a resume
            p.mul_(1.5)
    ps, greedy = prompts(local), SamplingParams(temperature=0.0, max_new_tokens=8)
    engine = build_engine(cfg, trainer, local.tokenizer, tiny_dir)
    try:
        assert isinstance(engine, RayEngine) and len(engine.actors) == 1
        assert ids(engine.generate(ps, greedy)) == ids(TorchEngine(trainer, local.tokenizer).generate(ps, greedy))
        with torch.no_grad():
            for p in trainer.parameters():
                p.mul_(0.5)
        sync_engine(engine, trainer)
        assert ids(engine.generate(ps, greedy)) == ids(TorchEngine(trainer, local.tokenizer).generate(ps, greedy))
    finally:
        engine.close()
    assert engine.actors == []


class HangingWorker(RolloutWorker):
    """A worker whose weight load never returns, like a stuck transfer."""

    def load(self, state_dict: dict[str, torch.Tensor]) -> bool:
        time.sleep(600)
        return True


def test_a_hung_sync_is_a_clear_error_not_a_hang(tiny_dir: Path, local: TorchEngine) -> None:
    hanging = RayEngine(tiny_dir, workers=1, sync_timeout_s=1.0, worker_cls=HangingWorker)
    t0 = time.monotonic()
    with pytest.raises(RolloutError, match=r"^engine.sync_timeout_s: rollout worker 0 did not load the weights"):
        hanging.sync_weights(local.model.state_dict())
    assert time.monotonic() - t0 < 10
    ray.kill(hanging.actors[0])  # a dead worker is named too, not a Ray traceback
    with pytest.raises(RolloutError, match=r"^engine.workers: rollout worker 0 died during generate"):
        hanging.generate(prompts(local), SamplingParams(max_new_tokens=4))
    hanging.close()


def flaky(examples: list[Example], texts: list[str]) -> list[float]:
    """The old reward interface's twin of ``tests.rewards.flaky``: a bug ("boom"), a hang ("hang")."""
    if texts[0] == "boom":
        raise ValueError("cannot parse")
    if texts[0] == "hang":
        time.sleep(600)
    return [float(t == "good") for t in texts]


def test_reward_pool_counts_errors_and_timeouts_and_recovers() -> None:
    pool = RewardPool(flaky, workers=2, timeout_s=1.0)
    ex = Example(id="e", prompt="q", answer="a")
    t0 = time.monotonic()
    report = pool.score([ex] * 5, ["good", "boom", "hang", "bad", "good"])
    assert time.monotonic() - t0 < 15
    assert report.scores == [1.0, None, None, 0.0, 1.0]  # missing, never 0
    assert (report.errors, report.timeouts) == (1, 1)
    assert any("ValueError: cannot parse" in m for m in report.messages)
    assert any("rollout.reward_timeout_s" in m for m in report.messages)
    again = pool.score([ex] * 3, ["good", "bad", "good"])  # the hung worker was replaced
    assert again.scores == [1.0, 0.0, 1.0]
    assert (again.errors, again.timeouts) == (0, 0)
    pool.close()


def test_the_recipes_reward_pool_on_ray_counts_errors_and_timeouts_and_recovers() -> None:
    """What GRPO and online DPO build with engine.backend=ray: a python component in Ray actors."""
    cfg = RewardConfig([RewardComponentConfig("python", function="tests.rewards:flaky")], workers=2, timeout_s=1.0)
    before = alive_actors()
    scorer = build_reward(cfg, ArithmeticTask(), backend="ray")
    ex = Example(id="e", prompt="q", answer="a")
    try:
        t0 = time.monotonic()
        report = scorer.score([ex] * 5, ["good", "boom", "hang", "bad", "good"])
        assert time.monotonic() - t0 < 15
        assert report.scores == [1.0, None, None, 0.0, 1.0]  # missing, never 0
        assert (report.errors, report.timeouts) == (1, 1)
        assert any("ValueError: cannot parse" in m for m in report.messages)
        assert any("reward.timeout_s" in m for m in report.messages)
        again = scorer.score([ex] * 3, ["good", "bad", "good"])  # the hung actor was replaced
        assert again.scores == [1.0, 0.0, 1.0]
        assert (again.errors, again.timeouts) == (0, 0)
    finally:
        scorer.close()
    assert_ended(before)


def test_grpo_on_ray_workers_reports_reward_failures(tmp_path: Path, tiny_dir: Path) -> None:
    # the task's verifier plus a python term with a bug some of the tiny model's completions hit, deterministically
    reward = "reward.components=[{kind: verifier}, {kind: python, function: tests.rewards:flaky_parity}]"
    # uniform groups kept: the verifier's all-0 groups still train, so a draw whose every scored group is uniform
    # is no run without an update (a group with a failed sample is dropped all the same)
    overrides = [*FAST, f"output_dir={tmp_path / 'g'}", f"model.path={tiny_dir}", "train.max_steps=2", reward,
                 "grpo.drop_uniform_groups=false"]  # fmt: skip
    ray_keys = ["engine.backend=ray", "engine.workers=2", "reward.workers=2", "reward.timeout_s=5"]
    final = grpo_recipe.train_grpo(load_config(None, [*overrides, *ray_keys]))
    records = read_metrics(tmp_path / "g" / "metrics.jsonl")
    assert [r["iteration"] for r in records] == [1, 2]
    assert all(r["reward_timeouts"] == 0 for r in records)
    assert sum(r["reward_errors"] for r in records) > 0
    assert all(r["groups_dropped"] > 0 for r in records if r["reward_errors"])
    assert all(r["unscored"] >= r["reward_errors"] for r in records)  # a failed sample is unscored, not 0
    assert (final / "model.safetensors").is_file()


def test_grpo_on_one_ray_worker_matches_the_in_process_run(tmp_path: Path, tiny_dir: Path) -> None:
    """The weights reach the worker after every iteration: otherwise later iterations would sample differently."""
    # a reward with a preference on nearly every prompt; worker processes score the in-process run, Ray actors the other
    common = [*FAST, f"model.path={tiny_dir}", "train.max_steps=2", "optim.lr=1e-2", python_reward("shorter_is_better")]
    grpo_recipe.train_grpo(load_config(None, [*common, f"output_dir={tmp_path / 't'}"]))
    on_ray = [*common, f"output_dir={tmp_path / 'r'}", "engine.backend=ray", "engine.workers=1"]
    grpo_recipe.train_grpo(load_config(None, on_ray))
    here, there = read_metrics(tmp_path / "t" / "metrics.jsonl"), read_metrics(tmp_path / "r" / "metrics.jsonl")
    assert [r["completion_len"] for r in there] == [r["completion_len"] for r in here]
    assert [r["loss"] for r in there] == pytest.approx([r["loss"] for r in here], rel=1e-4)


def test_online_dpo_on_one_ray_worker_matches_the_in_process_run(tmp_path: Path, tiny_dir: Path) -> None:
    """One worker keeps the call's seed, so only a missed or stale weight sync could tell the runs apart."""
    common = [*FAST, f"model.path={tiny_dir}", "train.max_steps=2", "rollout.sync_every=1", "optim.lr=3e-3"]
    common += [python_reward("shorter_is_better")]  # a preference on nearly every prompt: pairs to learn from
    common += ["rollout.prompts_per_step=4", "rollout.samples_per_prompt=4", "dpo.pairs=best_worst"]
    online.train_online_dpo(load_config(None, [*common, f"output_dir={tmp_path / 't'}"]))
    on_ray = [*common, f"output_dir={tmp_path / 'r'}", "engine.backend=ray", "engine.workers=1"]
    online.train_online_dpo(load_config(None, on_ray))
    here, there = read_metrics(tmp_path / "t" / "metrics.jsonl"), read_metrics(tmp_path / "r" / "metrics.jsonl")
    assert [r["pairs"] for r in there] == [r["pairs"] for r in here]
    assert all(r["pairs"] > 0 for r in here)
    assert [r["loss"] for r in there] == pytest.approx([r["loss"] for r in here], rel=1e-4)
    assert all(r["reward_errors"] == 0 and r["reward_timeouts"] == 0 for r in there)


def alive_actors() -> set[str]:
    """Ids of the actors Ray has not marked dead (``ray.util.state`` needs the dashboard, not started here)."""
    return {a for a, info in ray._private.state.actors().items() if info["State"] != "DEAD"}


def assert_ended(before: set[str], timeout_s: float = 15.0) -> None:
    """Every actor started since ``before`` was taken is dead (ray.kill returns before the actor has ended)."""
    deadline = time.monotonic() + timeout_s
    while (left := alive_actors() - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"{len(left)} actors outlived their engine or reward pool"


class SlowToLoad(RolloutWorker):
    """A worker whose model load never ends, like a stalled network disk."""

    def __init__(self, *args: Any) -> None:
        time.sleep(600)


def first_starts(claim: Path) -> type[RolloutWorker]:
    """A worker class of which the first actor starts and every other one fails in its constructor."""

    class FirstStarts(RolloutWorker):
        def __init__(self, *args: Any) -> None:
            try:
                os.close(os.open(claim, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                raise RuntimeError("no GPU left") from None
            super().__init__(*args)

    return FirstStarts


def test_a_failed_start_kills_the_workers_already_started(tiny_dir: Path, tmp_path: Path) -> None:
    before = alive_actors()
    # each `as` keeps the error's traceback, which holds the half-built engine: only a kill ends its actors
    with pytest.raises(RolloutError, match=r"^engine.workers: rollout worker \d died during start") as failed:
        RayEngine(tiny_dir, workers=2, worker_cls=first_starts(tmp_path / "claim"))
    assert (tmp_path / "claim").exists()  # one worker did start
    assert_ended(before)
    with pytest.raises(RolloutError, match=r"^engine.workers: rollout worker 0 did not start within 2 s") as hung:
        RayEngine(tiny_dir, workers=2, worker_cls=SlowToLoad, start_timeout_s=2.0)
    assert "raise it" not in str(hung.value)  # no setting raises the start-up limit
    assert_ended(before)
    del failed, hung


class Crash(Exception):
    pass


def test_grpo_on_ray_ends_its_actors_when_an_iteration_fails(
    tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = alive_actors()

    def crash(*args: Any, **kwargs: Any) -> None:
        raise Crash

    monkeypatch.setattr(grpo_recipe, "optimizer_step", crash)  # the first update raises, after sampling
    overrides = [*FAST, f"output_dir={tmp_path / 'g'}", f"model.path={tiny_dir}", "train.max_steps=2"]
    # rewards are all 0: kept (not dropped) uniform groups still reach the update that crashes; a python
    # reward runs in Ray reward actors, which must end with the rollout workers
    overrides += ["grpo.drop_uniform_groups=false", "engine.backend=ray", "engine.workers=2"]
    overrides += [python_reward("always_zero"), "reward.workers=2"]
    with pytest.raises(Crash) as crashed:  # the traceback holds the recipe's frame, engine and pool
        grpo_recipe.train_grpo(load_config(None, overrides))
    assert_ended(before)
    del crashed


@pytest.mark.parametrize(
    ("function", "why"),
    [
        ("tests.rewards:no_such_reward", "has no 'no_such_reward'"),  # a typo in the name
        ("tests.no_such_rewards_module:score", "ModuleNotFoundError"),  # a module that does not import
    ],
)
def test_online_dpo_on_ray_ends_its_actors_when_the_reward_does_not_load(
    tmp_path: Path, tiny_dir: Path, function: str, why: str
) -> None:
    """A python reward is imported in the driver when the scorer is built, before any iteration: a one-line
    ConfigError naming the component, and the rollout actors already started end with it."""
    before = alive_actors()
    overrides = [*FAST, f"output_dir={tmp_path / 'd'}", f"model.path={tiny_dir}", "train.max_steps=2"]
    overrides += ["rollout.prompts_per_step=2", "rollout.samples_per_prompt=2", "engine.backend=ray"]
    overrides += [f"reward.components=[{{kind: python, function: {function}}}]"]
    with pytest.raises(ConfigError, match=r"^reward.components.0.function: cannot load") as failed:
        online.train_online_dpo(load_config(None, overrides))
    assert why in str(failed.value) and "\n" not in str(failed.value)
    assert not (tmp_path / "d" / "metrics.jsonl").exists() or not read_metrics(tmp_path / "d" / "metrics.jsonl")
    assert_ended(before)
    del failed
