"""``teacher.backend=ray``: the teacher in one Ray actor gives the local teacher's numbers, and a run with it the local run.

Ray is an optional extra (``pip install 'posttrain[ray]'``); without it these tests skip,
saying so. A local Ray instance, one CPU actor, the tiny models of tests/integration/test_distill.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'posttrain[ray]'")

from posttrain.config import TinyModelConfig, load_config  # noqa: E402
from posttrain.data.batch import collate, pack  # noqa: E402
from posttrain.models.io import load_model, load_tokenizer  # noqa: E402
from posttrain.models.tiny import build_tiny  # noqa: E402
from posttrain.recipes.distill import train_distill  # noqa: E402
from posttrain.train.metrics import read_metrics  # noqa: E402
from posttrain.train.ray_teacher import RayTeacher  # noqa: E402
from posttrain.train.teacher import LocalTeacher, add_teacher_logprobs  # noqa: E402
from tests.conftest import FAST  # noqa: E402

SMALL = ["model.tiny.num_layers=1", "optim.lr=1e-2", "train.micro_batch_size=16", "grpo.drop_uniform_groups=false"]


def actors() -> dict[str, Any]:
    """Ray's table of the actors it started, by id (``ray.util.state`` needs the dashboard, not started here)."""
    return dict(ray._private.state.actors())


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    if ray.is_initialized():  # another module's Ray instance: this one needs its own
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = TinyModelConfig(hidden_size=48, num_layers=2, num_heads=2, intermediate_size=96, max_position_embeddings=64)
    return build_tiny(cfg, tmp_path_factory.mktemp("teacher"), seed=7)


def test_the_ray_teacher_scores_as_the_local_one(teacher_dir: Path) -> None:
    tok = load_tokenizer(teacher_dir)
    prompts = [list(tok(t)["input_ids"]) for t in ("1+2=?\n", "7-3+4=?\n", "9=?\n")]
    batch = collate(prompts, [[30, 31, 32], [33], [34, 35, 36, 37, 38]], int(tok.pad_token_id))  # type: ignore[arg-type]
    local = LocalTeacher(load_model(teacher_dir, device="cpu"))
    remote = RayTeacher(teacher_dir, timeout_s=120)
    try:
        for b in (batch, pack(batch)):  # right-padded rows, and packed ones (positions restart)
            for temperature in (1.0, 0.7):
                torch.testing.assert_close(remote.logits(b, temperature), local.logits(b, temperature),
                                           atol=1e-5, rtol=1e-5)  # fmt: skip
                torch.testing.assert_close(remote.logprobs(b, temperature), local.logprobs(b, temperature),
                                           atol=1e-5, rtol=1e-5)  # fmt: skip
        cfg = load_config(None, ["train.micro_batch_size=2", "sampling.temperature=0.8"])  # KDRL's chunked path
        here, there = collate(prompts, [[30], [31, 32], [33]], 0), collate(prompts, [[30], [31, 32], [33]], 0)
        add_teacher_logprobs(local, here, cfg, torch.device("cpu"))
        add_teacher_logprobs(remote, there, cfg, torch.device("cpu"))
        torch.testing.assert_close(there.extra["teacher_logprobs"], here.extra["teacher_logprobs"], atol=1e-5, rtol=0)
        assert here.extra["teacher_logprobs"].abs().sum() > 0
    finally:
        remote.close()


def test_distill_with_the_ray_teacher_is_the_local_run(tmp_path: Path, tiny_dir: Path, teacher_dir: Path) -> None:
    """JSD over the vocabulary and GKD's lambda (the actor samples the teacher's iterations): the same records."""
    records, before = {}, set(actors())
    for backend in ("local", "ray"):
        out = tmp_path / backend
        cfg = load_config(None, [*FAST, *SMALL, f"model.path={tiny_dir}", f"teacher.path={teacher_dir}",
                                 f"output_dir={out}", "train.max_steps=3", "distill.loss=jsd",
                                 "distill.on_policy_frac=0.5", f"teacher.backend={backend}"])  # fmt: skip
        train_distill(cfg)
        records[backend] = [r for r in read_metrics(out / "metrics.jsonl") if r.get("stage") == "distill"]
    started = {a: info for a, info in actors().items() if a not in before}
    assert [info["ActorClassName"] for info in started.values()] == ["TeacherWorker"]  # the ray run's, one
    deadline = time.monotonic() + 15  # ray.kill returns before the actor has ended
    while any(info["State"] != "DEAD" for info in actors().values() if info["ActorID"] in started):
        assert time.monotonic() < deadline, "the teacher's actor outlived its run"
        time.sleep(0.2)
    local, remote = records["local"], records["ray"]
    assert {r["sampled_by"] for r in local} == {"student", "teacher"}
    assert [r["sampled_by"] for r in remote] == [r["sampled_by"] for r in local]
    for key in ("loss", "distill", "reverse_kl", "teacher_logprob", "student_logprob", "reward"):
        assert [r[key] for r in remote] == pytest.approx([r[key] for r in local], rel=1e-4, abs=1e-5), key
