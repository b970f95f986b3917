"""A temperature head on Ray rollout workers (local Ray, CPU): same picks and tokens as the in-process sampler.

Ray is an optional extra (``pip install 'posttrain[ray]'``); without it these tests skip.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'posttrain[ray]'")

import posttrain.recipes.adaptive as adaptive  # noqa: E402
from posttrain.cli import main  # noqa: E402
from posttrain.models.io import load_model, load_tokenizer  # noqa: E402
from posttrain.models.temperature_head import load_head, new_head  # noqa: E402
from posttrain.rollout.base import SamplingParams  # noqa: E402
from posttrain.rollout.ray_engine import RayEngine  # noqa: E402
from posttrain.rollout.torch_engine import TorchEngine  # noqa: E402
from posttrain.train.metrics import read_metrics  # noqa: E402
from tests.conftest import FAST  # noqa: E402
from tests.integration.test_adaptive_resume import cfg_for  # noqa: E402
from tests.integration.test_seed_gaps import with_forced_head  # noqa: E402

TEXTS = ["1+2=?\n", "7-3+4=?\n", "not in 3,7?\n"]


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_a_synced_head_samples_on_the_worker_as_in_process(tiny_dir: Path) -> None:
    """A per-token head with random weights (picks that vary by token): one worker keeps the call's seed,
    so its picks, tokens and logprobs are the in-process engine's; a second sync replaces the head."""
    model, tok = load_model(tiny_dir), load_tokenizer(tiny_dir)
    head = new_head([0.0, 0.5, 1.0, 1.5], "token", 32, width=8, seed=3)
    with torch.no_grad():
        head.out.weight.copy_(torch.randn(head.out.weight.shape, generator=torch.Generator().manual_seed(0)))
    prompts = [tok(t)["input_ids"] for t in TEXTS]
    sp = SamplingParams(max_new_tokens=8, seed=5, adaptive="sample")
    here = TorchEngine(model, tok, head=head).generate(prompts, sp)
    engine = RayEngine(tiny_dir, workers=1, sync_timeout_s=60, generate_timeout_s=60)
    try:
        engine.sync_head(head)
        there = engine.generate(prompts, sp)
        assert [c.temperature_choices for c in there] == [c.temperature_choices for c in here]
        assert len({k for c in here for k in c.temperature_choices or []}) > 1  # the picks do vary
        assert [c.completion_ids for c in there] == [c.completion_ids for c in here]
        for a, b in zip(there, here):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
        greedy = new_head([0.0, 0.5, 1.0, 1.5], "token", 32, width=8)
        with torch.no_grad():
            greedy.out.bias.copy_(torch.tensor([50.0, -50.0, -50.0, -50.0]))
        engine.sync_head(greedy)
        assert all(c.temperature_choices == [0] * len(c.completion_ids) for c in engine.generate(prompts, sp))
    finally:
        engine.close()


def test_adaptive_on_one_ray_worker_trains_the_in_process_head(tmp_path: Path, tiny_dir: Path) -> None:
    """`posttrain adaptive engine.backend=ray`: the head reaches the worker after every LPO step;
    a missed sync would sample iteration 2 on with the uniform head and the runs would part."""
    here = adaptive.train_adaptive(cfg_for(tmp_path, tiny_dir, "t", "train.save_every=0"))
    there = adaptive.train_adaptive(
        cfg_for(tmp_path, tiny_dir, "r", "train.save_every=0", "engine.backend=ray", "engine.workers=1")
    )
    a, b = read_metrics(tmp_path / "t" / "metrics.jsonl"), read_metrics(tmp_path / "r" / "metrics.jsonl")
    assert [(r["pairs"], r["temperature"]) for r in b] == [(r["pairs"], r["temperature"]) for r in a]
    assert [r["loss"] for r in b] == [r["loss"] for r in a]
    ha, hb = load_head(here), load_head(there)
    assert ha is not None and hb is not None
    assert all(torch.equal(v, hb.state_dict()[k]) for k, v in ha.state_dict().items())


def test_generate_on_ray_with_a_saved_head_writes_its_picks(tmp_path: Path, tiny_dir: Path) -> None:
    d = with_forced_head(tiny_dir, tmp_path, pick=2, level="example")
    args = ["generate", f"model.path={d}", *FAST, "eval.num_problems=3", "sampling.adaptive=sample"]
    assert main([*args, f"output_dir={tmp_path / 'here'}"]) == 0
    assert main([*args, "engine.backend=ray", "engine.workers=1", f"output_dir={tmp_path / 'there'}"]) == 0
    rows = {n: [json.loads(x) for x in (tmp_path / n / "generations.jsonl").read_text().splitlines()]
            for n in ("here", "there")}  # fmt: skip
    assert len(rows["there"]) == 3 and all(r["temperature_choices"] == [2] for r in rows["there"])
    assert [r["completion"] for r in rows["there"]] == [r["completion"] for r in rows["here"]]
