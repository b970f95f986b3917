"""What each engine declares it can do, the one check that asks it, and weight sync by declaration."""

from __future__ import annotations

import copy
import dataclasses
import sys
import typing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import posttrain.recipes.generate as generate_recipe
from posttrain.config import Config, EngineConfig, LoraConfig, ModelConfig, SamplingConfig
from posttrain.errors import ConfigError
from posttrain.models.io import load_model, load_tokenizer
from posttrain.rollout.base import ENGINES, Completion, EngineCapabilities, SamplingParams
from posttrain.rollout.factory import build_engine, check_engine, sync_engine
from posttrain.rollout.torch_engine import TorchEngine
from posttrain.rollout.vllm_engine import VLLMEngine

# backend -> (in_process, device_tensors, lora, torchrun, truncation, needs_cuda)
DECLARED = {
    "torch": (True, False, True, True, True, False),
    "ray": (False, False, False, False, True, False),
    "vllm": (False, True, False, False, False, True),
}


def caps_tuple(c: EngineCapabilities) -> tuple[bool, ...]:
    return (c.in_process, c.device_tensors, c.lora, c.torchrun, c.truncation, c.needs_cuda)


def test_each_engine_declares_what_it_can_do() -> None:
    assert set(ENGINES) == set(typing.get_args(typing.get_type_hints(EngineConfig)["backend"]))  # every backend
    assert {b: caps_tuple(c) for b, c in ENGINES.items()} == DECLARED
    # each class holds the table's object, so a check and the engine can never disagree
    assert TorchEngine.capabilities is ENGINES["torch"]
    assert VLLMEngine.capabilities is ENGINES["vllm"]
    ray_engine = pytest.importorskip("posttrain.rollout.ray_engine", reason="Ray is an optional extra")
    assert ray_engine.RayEngine.capabilities is ENGINES["ray"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ENGINES["vllm"].truncation = True  # type: ignore[misc]


def test_the_table_and_the_check_need_neither_ray_nor_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ray", "vllm"):
        monkeypatch.setitem(sys.modules, name, None)  # what `import` sees when the extra is not installed
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for backend in ENGINES:
        check_engine(cfg_for(backend))
    assert ENGINES["vllm"].needs_cuda and not ENGINES["ray"].lora


def cfg_for(backend: str, **sections: Any) -> Config:
    return Config(engine=EngineConfig(backend=backend), **sections)  # type: ignore[arg-type]


TORCHRUN = "engine.backend: the {b} engine serves one trainer process: under torchrun use engine.backend=torch"
LORA = (
    "engine.backend: the {b} engine holds a plain model and cannot take LoRA adapter weights: "
    "use engine.backend=torch with lora"
)
TRUNCATION = (
    "engine.backend: the {b} engine returns logprobs after top-k/top-p truncation, which the trainer does not "
    "recompute: use sampling.top_p=1 and sampling.top_k=0 with engine.backend={b}"
)
NO_CUDA = "engine.backend: the {b} backend needs a CUDA GPU; use engine.backend=torch"


@pytest.fixture
def cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA machine, as far as the check can tell: the refusals below are about the other capabilities."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.mark.parametrize(
    ("backend", "sections", "distributed", "expected"),
    [
        ("ray", {}, True, TORCHRUN),
        ("vllm", {}, True, TORCHRUN),
        ("ray", {"lora": LoraConfig(r=4)}, False, LORA),
        ("vllm", {"lora": LoraConfig(r=4)}, False, LORA),
        ("vllm", {"sampling": SamplingConfig(top_p=0.9)}, False, TRUNCATION),
        ("vllm", {"sampling": SamplingConfig(top_k=5)}, False, TRUNCATION),
    ],
)
def test_check_engine_refuses_what_the_engine_cannot_do_in_one_line(
    cuda: None, backend: str, sections: dict[str, Any], distributed: bool, expected: str
) -> None:
    with pytest.raises(ConfigError) as e:
        check_engine(cfg_for(backend, **sections), distributed=distributed)
    assert str(e.value) == expected.format(b=backend)
    assert e.value.field == "engine.backend"


def test_check_engine_refuses_a_peft_policy_the_config_does_not_mention(cuda: None) -> None:
    with pytest.raises(ConfigError, match="^engine.backend: the ray engine holds a plain model"):
        check_engine(cfg_for("ray"), lora=True)
    check_engine(cfg_for("ray", lora=LoraConfig(r=4)), lora=False)  # the caller knows the policy has none


def test_an_engine_that_needs_cuda_is_refused_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as e:
        check_engine(cfg_for("vllm"))
    assert str(e.value) == NO_CUDA.format(b="vllm")
    check_engine(cfg_for("torch"))
    check_engine(cfg_for("ray"))


@pytest.mark.parametrize(
    ("backend", "sections", "distributed"),
    [
        ("torch", {"lora": LoraConfig(r=4), "sampling": SamplingConfig(top_p=0.9, top_k=5)}, True),
        ("ray", {"sampling": SamplingConfig(top_p=0.9, top_k=5)}, False),
        ("vllm", {}, False),
        ("vllm", {"sampling": SamplingConfig(temperature=0.7)}, False),
    ],
)
def test_check_engine_accepts_what_the_engine_can_do(
    cuda: None, backend: str, sections: dict[str, Any], distributed: bool
) -> None:
    check_engine(cfg_for(backend, **sections), distributed=distributed)


def test_the_factory_asks_before_it_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The LoRA refusal, not Ray's install hint: nothing of the engine was imported or started."""
    monkeypatch.setitem(sys.modules, "ray", None)
    peft_model: Any = SimpleNamespace(peft_config={"default": None})
    with pytest.raises(ConfigError, match="^engine.backend: the ray engine holds a plain model"):
        build_engine(cfg_for("ray"), peft_model, None, "unused")  # type: ignore[arg-type]
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="^engine.backend: the ray engine serves one trainer process"):
        build_engine(cfg_for("ray"), SimpleNamespace(), None, "unused")  # type: ignore[arg-type]


GREEDY = SamplingParams(temperature=0.0, max_new_tokens=4)


def ids(cs: list[Completion]) -> list[list[int]]:
    return [c.completion_ids for c in cs]


@pytest.fixture(scope="module")
def model(tiny_dir: Path) -> Any:
    return load_model(tiny_dir)


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path) -> Any:
    return load_tokenizer(tiny_dir)


def test_the_torch_engine_samples_from_the_trainer_itself(model: Any, tokenizer: Any) -> None:
    cfg = Config(engine=EngineConfig(batch_size=3))
    engine = build_engine(cfg, model, tokenizer, "unused")
    assert isinstance(engine, TorchEngine)
    assert engine.model is model and engine.batch_size == 3


def test_sync_onto_the_engines_own_module_is_a_no_op(
    model: Any, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = TorchEngine(model, tokenizer)
    params = {k: (p, p.data_ptr(), p.detach().clone()) for k, p in model.named_parameters()}

    def refuse(*args: Any) -> None:
        raise AssertionError("a sync onto the engine's own module copied weights")

    monkeypatch.setattr(engine, "sync_weights", refuse)
    monkeypatch.setattr(model, "state_dict", refuse)
    sync_engine(engine, model)
    for k, p in model.named_parameters():  # the very tensors, unchanged
        same, ptr, value = params[k]
        assert p is same and p.data_ptr() == ptr and torch.equal(p, value)


def test_sync_onto_a_copy_loads_the_trainers_weights(model: Any, tokenizer: Any) -> None:
    """The torch engine over a generator copy (online DPO) still needs the weights: full host copies."""
    generator = copy.deepcopy(model)
    engine = TorchEngine(generator, tokenizer)
    trainer = copy.deepcopy(model)
    with torch.no_grad():
        for p in trainer.parameters():
            p.add_(1.0)
    sync_engine(engine, trainer)
    got, want = dict(generator.named_parameters()), dict(trainer.named_parameters())
    for k in want:
        assert torch.equal(got[k], want[k])
        assert got[k].data_ptr() != want[k].data_ptr()  # a copy, not the trainer's tensor
    assert ids(engine.generate([[1, 2, 3]], GREEDY)) == ids(
        TorchEngine(trainer, tokenizer).generate([[1, 2, 3]], GREEDY)
    )


class Recorder:
    """An out-of-process engine double that keeps what a sync sent it."""

    def __init__(self, capabilities: EngineCapabilities) -> None:
        self.capabilities = capabilities
        self.model = None  # an attribute of that name must not matter: only the declaration does
        self.received: dict[str, torch.Tensor] = {}

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        return []

    def sync_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.received = state_dict

    def close(self) -> None:
        pass


def test_device_tensors_decides_what_a_sync_sends(model: Any) -> None:
    on_device, on_host = Recorder(ENGINES["vllm"]), Recorder(ENGINES["ray"])
    sync_engine(on_device, model)
    sync_engine(on_host, model)
    state = model.state_dict()
    assert set(on_device.received) == set(on_host.received) == set(state)
    for k, v in state.items():
        assert on_device.received[k].data_ptr() == v.data_ptr()  # the trainer's tensor itself, detached
        assert not on_device.received[k].requires_grad
        assert on_host.received[k].device.type == "cpu" and torch.equal(on_host.received[k], v)
    # an out-of-process engine is synced even when it happens to hold the same module
    holder = Recorder(ENGINES["ray"])
    holder.model = model
    sync_engine(holder, model)
    assert set(holder.received) == set(state)


def test_generate_builds_its_engine_through_the_factory(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[Any] = []

    class Scripted(Recorder):
        def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
            return [Completion(list(p), [7], [-0.1], "stop", "done") for p in prompts]

        def close(self) -> None:
            built.append("closed")

    def fake_build(cfg: Config, model: Any, tokenizer: Any, model_dir: Any) -> Scripted:
        built.append(cfg.engine.backend)
        return Scripted(ENGINES[cfg.engine.backend])

    monkeypatch.setattr(generate_recipe, "build_engine", fake_build)
    cfg = Config(
        model=ModelConfig(path=str(tiny_dir)), output_dir=str(tmp_path), engine=EngineConfig(backend="ray"),
        sampling=SamplingConfig(max_new_tokens=8),
    )  # fmt: skip
    rows = generate_recipe.run_generate(cfg, ["1+1=?\n", "2+2=?\n"])
    assert [r["completion"] for r in rows] == ["done", "done"]
    assert built == ["ray", "closed"]
