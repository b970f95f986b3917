"""Where tensors live and in what precision they are computed.

``model.device: auto`` is the GPU when there is one, else the CPU.
``train.mixed_precision: bf16`` keeps fp32 master weights and optimiser state and
runs forward passes (training, sampling, evaluation) under bf16 autocast, the
usual recipe on GPUs with bf16 tensor cores; on a CPU it is left off by default
because bf16 matmuls there are rarely faster.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@contextlib.contextmanager
def precision(device: torch.device, mode: str) -> Iterator[None]:
    if mode == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
