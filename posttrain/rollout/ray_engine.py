"""Rollout on N Ray actors, each holding its own copy of the policy.

Generation is the bottleneck of RL; spreading it over workers (processes, GPUs or
machines) is the first remedy. Each actor loads the model directory once and
wraps a ``TorchEngine``, so every worker samples exactly as the in-process engine
does. ``generate`` splits the prompts into N contiguous shares, one per worker,
and returns the completions in prompt order.

Seeds: share i draws with a seed derived from ``(sampling.seed, i)``, and share 0
uses ``sampling.seed`` itself, so one worker reproduces the in-process engine
exactly; a seeded call is reproducible for a fixed number of workers.

Weight sync puts the state dict in Ray's object store once and has every worker
load it. A temperature head (adaptive decoding, ``posttrain.models.temperature_head``)
travels the same way (``sync_head``: its settings and weights, a few kilobytes), and
each worker's sampler then picks temperatures with it exactly as the in-process one
does; ``posttrain adaptive`` sends it again after every LPO step. Users of other frameworks report syncs that hang with no word, so every
wait here has a limit (``engine.sync_timeout_s``, ``engine.generate_timeout_s``)
and ends in a one-line ``RolloutError`` naming the worker and the setting; a dead
actor ends the same way instead of as a Ray traceback. Start-up has a fixed limit
(``START_TIMEOUT_S``); an engine that fails to start kills the actors it started.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
import torch

from posttrain.errors import RolloutError
from posttrain.rollout.base import RAY_ENGINE, Completion, EngineCapabilities, SamplingParams

START_TIMEOUT_S = 600.0  # loading a large model from a network disk can take minutes
_NO_START = "a fixed limit: Ray found no free CPU or GPU for it, or loading the model stalled"


class RolloutWorker:
    """One actor's state: the policy copy and its sampler. Plain class; ``RayEngine`` makes it remote."""

    def __init__(self, model_dir: str, dtype: str, batch_size: int, mixed_precision: str) -> None:
        import transformers

        from posttrain.models.io import load_model, load_tokenizer
        from posttrain.rollout.torch_engine import TorchEngine

        # the driver shows the run's progress; the workers' loading bars would only interleave with it
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        # the GPU Ray assigned to this actor (a fraction when workers share one), else the CPU
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        model = load_model(model_dir, dtype, device).eval()
        model.requires_grad_(False)
        self.engine = TorchEngine(model, load_tokenizer(model_dir), batch_size=batch_size)
        self.mixed_precision = mixed_precision

    def ready(self) -> bool:
        return True

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        from posttrain.device import precision

        with precision(self.engine.model.device, self.mixed_precision):
            return self.engine.generate(prompts, sampling)

    def load(self, state_dict: dict[str, torch.Tensor]) -> bool:
        """Load the trainer's weights; keys that do not match are an error, never silently skipped."""
        missing, unexpected = self.engine.model.load_state_dict(state_dict, strict=False)
        if missing or unexpected:
            raise ValueError(f"the weights do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        return True

    def load_head(self, settings: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> bool:
        """Sample with this temperature head from now on (a new one, or the trainer's latest weights)."""
        from posttrain.models.temperature_head import HeadSettings, TemperatureHead

        head = TemperatureHead(HeadSettings(**{**settings, "temperatures": tuple(settings["temperatures"])}))
        head.load_state_dict(state_dict)
        self.engine.head = head.to(self.engine.model.device).eval()
        return True


def share_bounds(n: int, workers: int) -> list[int]:
    """Cut points of ``n`` items into ``workers`` contiguous shares whose sizes differ by at most one."""
    return [i * n // workers for i in range(workers + 1)]


def share_seed(seed: int | None, worker: int) -> int | None:
    """Worker 0 keeps the call's seed (one worker = the local engine); the others get distinct ones."""
    if seed is None:
        return None
    return (seed + worker * 0x9E3779B97F4A7C15) % 2**63


class RayEngine:
    """A ``RolloutEngine`` over ``workers`` Ray actors. Needs ``ray.init`` to have run."""

    capabilities: EngineCapabilities = RAY_ENGINE
    role, workers_field = "rollout worker", "engine.workers"  # what the errors call an actor, and its setting

    def __init__(
        self,
        model_dir: str | Path,
        workers: int,
        dtype: str = "float32",
        batch_size: int = 256,
        mixed_precision: str = "no",
        sync_timeout_s: float = 120.0,
        generate_timeout_s: float = 600.0,
        worker_cls: type[RolloutWorker] = RolloutWorker,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        if workers < 1:
            raise RolloutError(f"need at least one rollout worker, got {workers}", field="engine.workers")
        self.sync_timeout_s = sync_timeout_s
        self.generate_timeout_s = generate_timeout_s
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        # share what GPUs there are (fractions when fewer than workers); none: CPU actors
        options: dict[str, Any] = {"num_gpus": min(1.0, gpus / workers)} if gpus else {}
        remote: Any = ray.remote(worker_cls)  # Ray's stubs do not follow a class through remote()
        self.actors: list[Any] = []
        try:
            for _ in range(workers):
                self.actors.append(remote.options(**options).remote(str(model_dir), dtype, batch_size, mixed_precision))
            self._wait([a.ready.remote() for a in self.actors], start_timeout_s, "start", None)
        except BaseException:  # the caller gets no engine to close: its actors would outlive the error
            self.close()
            raise

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        """Completions in prompt order; worker i samples the i-th contiguous share."""
        bounds = share_bounds(len(prompts), len(self.actors))
        calls = []
        for i, actor in enumerate(self.actors):
            share = prompts[bounds[i] : bounds[i + 1]]
            if share:
                params = dataclasses.replace(sampling, seed=share_seed(sampling.seed, i))
                calls.append((i, actor.generate.remote(share, params)))
        results = self._wait(
            [ref for _, ref in calls], self.generate_timeout_s, "generate", "engine.generate_timeout_s",
            [i for i, _ in calls],
        )  # fmt: skip
        return [c for share in results for c in share]

    def sync_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Put the weights in the object store once; every worker loads them within ``sync_timeout_s``."""
        ref = ray.put({k: v.detach().cpu() for k, v in state_dict.items()})
        self._wait(
            [a.load.remote(ref) for a in self.actors], self.sync_timeout_s, "load the weights", "engine.sync_timeout_s"
        )

    def sync_head(self, head: Any) -> None:
        """Send a temperature head (``TemperatureHead``) to every worker within ``sync_timeout_s``."""
        settings = dataclasses.asdict(head.settings)
        ref = ray.put({k: v.detach().cpu() for k, v in head.state_dict().items()})
        self._wait(
            [a.load_head.remote(settings, ref) for a in self.actors], self.sync_timeout_s, "load the temperature head",
            "engine.sync_timeout_s",
        )  # fmt: skip

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []

    def _wait(
        self, refs: list[Any], timeout_s: float, what: str, field: str | None, workers: Sequence[int] | None = None
    ) -> list[Any]:
        """Every result, in order, or a ``RolloutError`` naming the first worker that hung, died or failed."""
        workers = list(workers) if workers is not None else list(range(len(refs)))
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        done = set(ready)
        out = []
        for w, ref in zip(workers, refs):
            if ref not in done:
                why = "raise it if the model is large" if field else _NO_START
                raise RolloutError(
                    f"{self.role} {w} did not {what} within {timeout_s:g} s; {why}", field=field or self.workers_field
                )
            try:
                out.append(ray.get(ref))
            except ray.exceptions.RayActorError as e:
                raise RolloutError(
                    f"{self.role} {w} died during {what}: {_first_line(e)}", field=self.workers_field
                ) from e
            except ray.exceptions.RayTaskError as e:
                cause = e.cause if e.cause is not None else e
                raise RolloutError(
                    f"{self.role} {w} failed to {what}: {type(cause).__name__}: {_first_line(cause)}",
                    field=field or self.workers_field,
                ) from e
        return out


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__
