"""Multi-process training under torchrun: the process group, ranks, model wrapping, reductions.

torchrun (or any launcher that sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT) starts one process per device; WORLD_SIZE > 1 turns this module on.
A single process never initialises torch.distributed: every helper here is then
the identity (rank 0 of 1), so the one-process path is the code that ran before.
Several nodes (``torchrun --nnodes``) need ``output_dir`` on storage every node
sees: rank 0 writes the base model and checkpoints that all ranks read.

The division of labour, the same for every recipe: each rank holds its share of a
step's rows (``shard``); the loop sums loss numerators, normalisers and metrics
over ranks (``posttrain.train.loop``), so the gradient and every logged number are
those of one process with the same global batch. Only rank 0 writes files and
prints; the other ranks compute.

Everything here is torch.distributed itself: ``init_process_group`` from the
environment, ``DistributedDataParallel``, FSDP2's ``fully_shard`` on each decoder
layer and the root (which works on CPU with gloo too), and plain collectives.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel

from posttrain.config import DistConfig
from posttrain.device import resolve_device
from posttrain.errors import ConfigError

T = TypeVar("T")

_ENV = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_settings = DistConfig()  # the DistConfig of the running stage; read by the checkpoint code


def launched_world() -> int:
    """WORLD_SIZE as the launcher set it (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError("WORLD_SIZE must be an integer", file="environment", field="WORLD_SIZE") from None


def active() -> bool:
    """Training is spread over processes: a group of more than one.

    A group of one is not ours to act on: vLLM's in-process engine makes one.
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, the only process that writes files and prints; True in a single process."""
    return rank() == 0


def settings() -> DistConfig:
    return _settings


def backend_for(cfg: DistConfig, device: torch.device) -> str:
    """gloo on CPU, nccl on CUDA (``auto``); a backend that cannot work here is a config error."""
    backend = cfg.backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and (device.type != "cuda" or not torch.cuda.is_available()):
        raise ConfigError(
            f"nccl needs CUDA devices, but the model runs on {device.type}: use dist.backend=gloo (or auto)",
            file="command line",
            field="dist.backend",
        )
    return backend


def init(cfg: DistConfig, device_name: str) -> bool:
    """Join the process group when launched with WORLD_SIZE > 1; return whether distributed.

    Idempotent: stages run one after another in a process share one group. On CUDA
    each process takes the GPU of its LOCAL_RANK before anything touches a device.
    Ranks other than 0 silence the console, so logs and progress bars appear once.
    """
    global _settings
    _settings = cfg
    size = launched_world()
    if size <= 1:
        return False
    if active():
        return True
    device = resolve_device(device_name)
    backend = backend_for(cfg, device)
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={size} but {', '.join(missing)} unset: launch with torchrun --nproc_per_node=N",
            file="environment",
            field="WORLD_SIZE",
        )
    if device.type == "cuda":
        if device.index is not None:  # every rank would load onto that one GPU
            raise ConfigError(
                f"{device_name} pins one GPU; under torchrun use model.device=cuda or auto (each rank takes LOCAL_RANK)",
                field="model.device",
            )
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend, timeout=timedelta(seconds=cfg.timeout_s))
    if not is_main():
        from posttrain.train.metrics import console

        console.quiet = True
    atexit.register(destroy)
    return True


def destroy() -> None:
    if active():
        dist.destroy_process_group()


def check_divisible(value: int, field: str) -> None:
    """A global batch size must split evenly over the ranks, or ranks would see different batches."""
    size = world()
    if value % size:
        raise ConfigError(
            f"{value} does not split over {size} processes: make it a multiple of the world size",
            file="command line",
            field=field,
        )


def shard(rows: Sequence[T]) -> list[T]:
    """This rank's share of one step's rows: every world-th row from its rank on."""
    return list(rows[rank() :: world()])


def barrier() -> None:
    if active():
        dist.barrier()


def _reduce_device() -> torch.device:
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sums over ranks, in float64 so counts of tokens stay exact."""
    if not active():
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_max(value: float) -> float:
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order (small picklable things: metric sums, RNG states)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks FSDP shards one by one: HF names their classes in ``_no_split_modules``."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def wrap(model: torch.nn.Module, cfg: DistConfig) -> torch.nn.Module:
    """The module to run training forwards through: ``model`` itself in one process.

    ddp: a DistributedDataParallel around ``model``, which stays the HF model for
    everything but the training forward (``.device``, ``.config``, saving, sampling).
    fsdp: ``model`` sharded in place, each decoder layer and then the root, and
    returned as is. Build the optimiser after this: FSDP replaces the parameters.
    """
    if not active():
        return model
    device = next(model.parameters()).device
    if cfg.strategy == "ddp":
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    mesh = init_device_mesh(device.type, (world(),))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


@contextlib.contextmanager
def full_weights(model: torch.nn.Module) -> Iterator[None]:
    """Hold FSDP-sharded weights whole for the block: sampling without collectives.

    Ranks sample different prompts and stop after different numbers of decode steps;
    a sharded forward all-gathers, so unequal numbers of forwards would hang. With
    every FSDP module unsharded (and kept so after each forward) a forward is local.
    Costs one full copy of the weights per rank while it lasts; a no-op without FSDP.
    Afterwards the layers reshard after each forward again and the root does not
    (FSDP2's own defaults: the root's weights are needed at once by the backward).
    """
    mods = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in mods:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m in mods:
            m.reshard()
            m.set_reshard_after_forward(m is not model, recurse=False)
