"""Checkpoints that survive a kill at any instant, and resume that repeats nothing.

A checkpoint is a directory ``checkpoints/step_000120/`` holding the model and
tokenizer in Hugging Face format plus ``trainer_state.pt`` (optimiser, scheduler,
RNG states and the recipe's own position in its data). It is written under a
temporary name and renamed into place, and ``checkpoints/latest`` (a one-line file
replaced atomically) names the newest complete one, so a kill mid-save leaves the
previous checkpoint as ``latest``.

Under torchrun (``posttrain.train.distributed``) every rank calls the same
functions. ``dist.checkpoint=gathered`` gathers the full model and optimiser state
to rank 0, which writes exactly the directory above (the optimiser in the same
index-keyed form as one process writes, so a run may resume with another number of
processes); every rank reads it back. ``sharded`` saves model and optimiser with
torch.distributed.checkpoint (DCP) under ``dcp/`` in the same directory, each rank
writing its shards, next to the config, tokenizer and ``trainer_state.pt``; it is
resumed under torchrun only. RNG states are kept per rank. ``final/`` is always a
gathered Hugging Face directory (``save_final``).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    get_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from posttrain.models.io import replace_dir, save_pretrained_atomic
from posttrain.train import distributed

STATE_FILE = "trainer_state.pt"
SHARDS = "dcp"  # torch.distributed.checkpoint's directory inside a sharded checkpoint
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors, on rank 0's CPU


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():  # dropout on the GPU (LoRA's, a model's own) draws from these
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(
    root: Path,
    step: int,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    optimizer: Optimizer,
    scheduler: LambdaLR,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write ``root/step_{step}`` and point ``latest`` at it; under torchrun every rank calls this."""
    if distributed.active():
        return _save_distributed(root, step, model, tokenizer, optimizer, scheduler, extra or {}, keep)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "extra": extra or {},
    }
    torch.save(state, tmp / STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_text_atomic(root / "latest", final.name + "\n")
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    done = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / STATE_FILE).is_file() else None


def load_trainer_state(
    path: Path, optimizer: Optimizer, scheduler: LambdaLR, model: torch.nn.Module | None = None
) -> dict[str, Any]:
    """Restore optimiser, scheduler and RNG; return the state (``step``, ``extra``).

    Under torchrun pass ``model`` (the HF model, wrapped or sharded in place): the
    optimiser state is set through it, and a sharded checkpoint loads the weights too.
    """
    state = torch.load(path / STATE_FILE, weights_only=False)
    if distributed.active():
        assert model is not None, "a distributed resume restores the optimiser through the model"
        _load_distributed(path, state, model, optimizer)
    else:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    by_rank = state.get("rng_by_rank", [])
    set_rng_state(by_rank[distributed.rank()] if len(by_rank) == distributed.world() else state["rng"])
    return state


def is_sharded(path: Path | None) -> bool:
    """A checkpoint whose weights are DCP shards, which only a distributed run can load."""
    return path is not None and (path / SHARDS).is_dir()


def save_final(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path) -> Path:
    """``out`` as a plain Hugging Face directory; under torchrun gathered and written by rank 0."""
    if not distributed.active():
        return save_pretrained_atomic(model, tokenizer, out)
    weights = full_weights(model)  # a collective: every rank takes part
    if distributed.is_main():
        tmp = out.with_name(out.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        replace_dir(tmp, out)
    distributed.barrier()
    return out


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict on rank 0's CPU (empty elsewhere), tied weights tied again.

    Gathering copies each name on its own, so the tied embedding and output head would
    come back as two tensors and be saved twice; pointing every alias at one tensor
    lets ``save_pretrained`` drop the copies as it does for the model itself.
    """
    weights = cast(dict[str, torch.Tensor], get_model_state_dict(model, options=FULL))
    first: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        alias = first.setdefault(id(param), name)
        if alias != name and name in weights and alias in weights:
            weights[name] = weights[alias]
    return weights


def _param_names(model: torch.nn.Module, optimizer: Optimizer) -> list[str]:
    """The name of each optimiser parameter, in the order ``optimizer.state_dict()`` numbers them."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _renumber(state: dict[str, Any], keys: list[Any], to: list[Any]) -> dict[str, Any]:
    """An optimiser state dict with parameter keys ``keys[i]`` replaced by ``to[i]``."""
    index = dict(zip(keys, to))
    groups = [{**g, "params": [index[k] for k in g["params"]]} for g in state["param_groups"]]
    return {"state": {index[k]: v for k, v in state["state"].items()}, "param_groups": groups}


def _save_distributed(
    root: Path,
    step: int,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    optimizer: Optimizer,
    scheduler: LambdaLR,
    extra: dict[str, Any],
    keep: int,
) -> Path:
    """The collective save: rank 0 prepares and publishes the directory, every rank contributes."""
    final, tmp = root / f"step_{step:06d}", root / f".tmp_step_{step:06d}"
    sharded = distributed.settings().checkpoint == "sharded"
    if distributed.is_main():
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    distributed.barrier()
    rngs = distributed.gather_objects(rng_state())
    state: dict[str, Any] = {"step": step, "scheduler": scheduler.state_dict(), "rng": rngs[0], "extra": extra}
    state.update(rng_by_rank=rngs, world_size=distributed.world())
    if sharded:
        shards, optim = get_state_dict(model, optimizer)
        dcp.save({"model": shards, "optimizer": optim}, checkpoint_id=str(tmp / SHARDS))
    else:
        weights = full_weights(model)
        names = _param_names(model, optimizer)
        full = get_optimizer_state_dict(model, optimizer, options=FULL)
        state["optimizer"] = _renumber(full, names, list(range(len(names)))) if distributed.is_main() else {}
    if distributed.is_main():
        if sharded:
            model.config.save_pretrained(tmp)
        else:
            model.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        torch.save(state, tmp / STATE_FILE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_text_atomic(root / "latest", final.name + "\n")
        _prune(root, keep)
    distributed.barrier()
    return final


def _load_distributed(path: Path, state: dict[str, Any], model: torch.nn.Module, optimizer: Optimizer) -> None:
    """Every rank restores its part: DCP shards, or the gathered optimiser state read from the file.

    Gathered weights were already read by every rank (the checkpoint is the model directory).
    """
    if is_sharded(path):
        weights, optim = get_state_dict(model, optimizer)
        dcp.load({"model": weights, "optimizer": optim}, checkpoint_id=str(path / SHARDS))
        set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=optim)
        return
    names = _param_names(model, optimizer)
    full = _renumber(state["optimizer"], list(range(len(names))), names)
    set_optimizer_state_dict(model, optimizer, full, options=StateDictOptions(full_state_dict=True))
