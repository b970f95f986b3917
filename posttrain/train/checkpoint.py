"""Checkpoints that survive a kill at any instant, and resume that repeats nothing.

A checkpoint is a directory ``checkpoints/step_000120/`` holding the model and
tokenizer in Hugging Face format plus ``trainer_state.pt`` (optimiser, scheduler,
RNG states and the recipe's own position in its data). It is written under a
temporary name and renamed into place, and ``checkpoints/latest`` (a one-line file
replaced atomically) names the newest complete one, so a kill mid-save leaves the
previous checkpoint as ``latest``. A full disk during a save is one line naming the
directory; the partial save is removed and the previous checkpoint stays ``latest``.

``trainer_state.pt`` holds only tensors and plain Python values, so it loads with
``torch.load(weights_only=True)``: a checkpoint directory from elsewhere cannot run
code on ``--resume``. What is not plain is converted on save and back on load
(numpy's RNG state: its key array becomes an int64 tensor). A state file that would
import anything else is refused in one line naming it. Files of the previous release,
which pickled numpy's RNG state as an ndarray, are still read: numpy's array and dtype
(and nothing more) are allowed for them.

Resume picks the checkpoint ``latest`` names if it is loadable, else the newest
loadable ``step_*``, saying so: a dangling or garbage pointer, or a truncated
``model.safetensors`` or ``trainer_state.pt``, costs the steps since the older
checkpoint, not the whole run. When checkpoints exist and none loads, that is one
line naming the newest's broken file.

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

import errno
import json
import os
import random
import re
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from safetensors import safe_open
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

from posttrain.errors import CheckpointError
from posttrain.models.io import replace_dir, save_pretrained_atomic
from posttrain.train import distributed
from posttrain.train.metrics import console

STATE_FILE = "trainer_state.pt"
STATE_FORMAT = 2  # 2: plain types only (weights_only); the previous release wrote no "format"
SHARDS = "dcp"  # torch.distributed.checkpoint's directory inside a sharded checkpoint
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors, on rank 0's CPU
STEP_DIR = re.compile(r"step_\d+")

try:
    from numpy._core.multiarray import _reconstruct  # type: ignore[attr-defined]
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[attr-defined,no-redef]
# What the previous release's state files import beyond torch's default allowlist: numpy's
# RNG key array. Rebuilding an ndarray runs no code of the file's choosing.
LEGACY_GLOBALS: list[Any] = [
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),  # the key's dtype, which the pickle builds (numpy.dtypes.UInt32DType)
    _reconstruct,
    (_reconstruct, "numpy.core.multiarray._reconstruct"),  # as numpy 1.x names it
]
LEGACY_NAMES = {
    "numpy.ndarray",
    "numpy.dtype",
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray._reconstruct",
}


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and plain values (what ``weights_only`` loads)."""
    np_state = cast(dict[str, Any], np.random.get_state(legacy=False))
    numpy_plain = {
        "bit_generator": str(np_state["bit_generator"]),
        "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),  # uint32 values, exactly
        "pos": int(np_state["state"]["pos"]),
        "has_gauss": int(np_state["has_gauss"]),
        "gauss": float(np_state["gauss"]),
    }
    state = {"python": random.getstate(), "numpy": numpy_plain, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():  # dropout on the GPU (LoRA's, a model's own) draws from these
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np_state = state["numpy"]
    if isinstance(np_state, dict):
        np.random.set_state(
            {
                "bit_generator": np_state["bit_generator"],
                "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
                "has_gauss": np_state["has_gauss"],
                "gauss": np_state["gauss"],
            }
        )
    else:  # the previous release's tuple with an ndarray
        np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _disk_full(e: BaseException) -> bool:
    """An ENOSPC anywhere in the chain; torch and safetensors rewrap it, keeping the words."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(seen).lower()
        if "no space left on device" in text or "storagefull" in text or "quota exceeded" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _check_plain(file: Path) -> None:
    """Refuse to write a state that ``weights_only`` would not load: a bug, caught at the save, not the resume."""
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(file)
    if unsafe:
        raise TypeError(f"the trainer state holds types weights_only=True does not load: {', '.join(unsafe)}")


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

    def write(d: Path) -> None:
        model.save_pretrained(d, safe_serialization=True)
        tokenizer.save_pretrained(d)

    return save_files_checkpoint(root, step, write, optimizer, scheduler, extra, keep)


def save_files_checkpoint(
    root: Path,
    step: int,
    write: Callable[[Path], object],
    optimizer: Optimizer,
    scheduler: LambdaLR,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """``save_checkpoint`` of one process with the weights ``write(directory)`` puts there (safetensors).

    The same directory, state file, atomic rename, ``latest`` pointer, pruning and full-disk
    handling; for a trained module that is not the model (a temperature head).
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}"
    state = {
        "format": STATE_FORMAT,
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "extra": extra or {},
    }
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        write(tmp)
        torch.save(state, tmp / STATE_FILE)
        _check_plain(tmp / STATE_FILE)
        _publish(root, tmp, final)
    except Exception as e:
        if not _disk_full(e):
            raise
        _undo_save(root, tmp, final)
        raise CheckpointError(
            f"no space left on device while saving step {step}; removed the partial save, "
            f"{_kept(root)}; free space and resume with --resume",
            file=str(root),
        ) from None
    _prune(root, keep)
    return final


def _publish(root: Path, tmp: Path, final: Path) -> None:
    """Rename the finished ``tmp`` into place and point ``latest`` at it."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_text_atomic(root / "latest", final.name + "\n")


def _undo_save(root: Path, tmp: Path, final: Path) -> None:
    """After a failed save: nothing of it left, ``latest`` as it was (freeing the space it took)."""
    shutil.rmtree(tmp, ignore_errors=True)
    (root / "latest.tmp").unlink(missing_ok=True)
    pointer = root / "latest"
    named = pointer.read_text(errors="replace").strip() if pointer.is_file() else ""
    if final.exists() and named != final.name:  # renamed, but the pointer could not follow
        shutil.rmtree(final, ignore_errors=True)


def _kept(root: Path) -> str:
    pointer = root / "latest"
    named = pointer.read_text(errors="replace").strip() if pointer.is_file() else ""
    return f"kept the previous checkpoint {named}" if named else "no earlier checkpoint"


def _prune(root: Path, keep: int) -> None:
    done = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _read_state(file: Path, mmap: bool = False) -> dict[str, Any]:
    """``file`` loaded with ``weights_only=True``; one line naming it when it cannot or must not be."""
    if not file.is_file():
        raise CheckpointError(f"missing ({STATE_FILE} is written last: the save did not finish)", file=str(file))
    if not zipfile.is_zipfile(file):  # torch.save writes a zip archive; a raw pickle is never ours
        raise CheckpointError("truncated or not a trainer state (not a torch.save archive)", file=str(file))
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(file)  # reads opcodes, runs nothing
    except Exception as e:
        raise CheckpointError(f"truncated or not a trainer state ({_first_line(e)})", file=str(file)) from None
    allowed: list[Any] = []
    if unsafe and set(unsafe) <= LEGACY_NAMES:
        allowed = LEGACY_GLOBALS  # the previous release's numpy RNG state
    elif unsafe:
        raise CheckpointError(
            f"refusing to load: it would import {', '.join(unsafe)}, and a trainer state holds only "
            "tensors and plain values (the file may carry code); resume only from checkpoints you trust",
            file=str(file),
        )
    try:
        with torch.serialization.safe_globals(allowed):
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        raise CheckpointError(f"truncated or not a trainer state ({_first_line(e)})", file=str(file)) from None
    if not isinstance(state, dict) or not {"step", "scheduler", "rng"} <= set(state):
        raise CheckpointError("not a trainer state (no step, scheduler and rng entries)", file=str(file))
    return state


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


def _problem(path: Path) -> CheckpointError | None:
    """Why ``path`` cannot be resumed from (None: it can); a refused payload is raised, not returned."""
    try:
        _read_state(path / STATE_FILE, mmap=True)
    except CheckpointError as e:
        if e.message.startswith("refusing"):
            raise
        return e
    for name in ("config.json", "adapter_config.json"):
        cfg = path / name
        if cfg.is_file():
            try:
                json.loads(cfg.read_text())
            except (ValueError, UnicodeDecodeError) as e:
                return CheckpointError(f"not valid JSON ({e})", file=str(cfg))
    if is_sharded(path):
        metadata = path / SHARDS / ".metadata"
        return None if metadata.is_file() else CheckpointError("missing: the shards are incomplete", file=str(metadata))
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        return CheckpointError("no weights (*.safetensors)", file=str(path))
    for w in weights:
        try:
            with safe_open(str(w), "pt"):  # reads the header and checks the file covers every tensor
                pass
        except Exception as e:
            return CheckpointError(f"truncated or not a safetensors file ({_first_line(e)})", file=str(w))
    return None


_said: set[tuple[str, tuple[tuple[str, int], ...]]] = set()


def _say(root: Path, message: str) -> None:
    """Print ``message`` once per state of ``root`` (resume looks for the checkpoint twice)."""
    listing = tuple(sorted((p.name, p.stat().st_mtime_ns) for p in root.iterdir()))
    if (message, listing) not in _said:
        _said.add((message, listing))
        console.print(f"[yellow]resume:[/] {message}", soft_wrap=True, highlight=False)


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint to resume from: ``latest`` if loadable, else the newest loadable ``step_*``.

    None when there is no checkpoint at all; a ``CheckpointError`` naming the broken
    file when there are some and none loads, or when a state file carries code.
    """
    steps = sorted((p for p in root.glob("step_*") if p.is_dir() and STEP_DIR.fullmatch(p.name)), reverse=True)
    pointer = root / "latest"
    named: Path | None = None
    why_not_pointer = ""
    if pointer.is_file():
        text = pointer.read_bytes().decode("utf-8", errors="replace").strip()
        if STEP_DIR.fullmatch(text) and (root / text).is_dir():
            named = root / text
        else:
            why_not_pointer = f"{pointer} names {text[:40]!r}, no checkpoint directory"
    elif steps:
        why_not_pointer = f"{pointer} is missing"
    candidates = ([named] if named else []) + [p for p in steps if p != named]
    problems: list[CheckpointError] = []
    for path in candidates:
        problem = _problem(path)
        if problem is None:
            skipped = ([why_not_pointer] if why_not_pointer else []) + [p.render() for p in problems]
            if skipped:
                _say(root, f"{'; '.join(skipped)}; resuming from the newest loadable checkpoint {path.name}")
            return path
        problems.append(problem)
    if problems:
        first = problems[0]
        raise CheckpointError(
            f"{first.message}; no loadable checkpoint under {root} (run without --resume to start over)",
            file=first.file,
        )
    if why_not_pointer:
        _say(root, f"{why_not_pointer}, and no step_* directory: starting from step 0")
    return None


def load_trainer_state(
    path: Path, optimizer: Optimizer, scheduler: LambdaLR, model: torch.nn.Module | None = None
) -> dict[str, Any]:
    """Restore optimiser, scheduler and RNG; return the state (``step``, ``extra``).

    Under torchrun pass ``model`` (the HF model, wrapped or sharded in place): the
    optimiser state is set through it, and a sharded checkpoint loads the weights too.
    """
    state = _read_state(path / STATE_FILE)
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
    state: dict[str, Any] = {"format": STATE_FORMAT, "step": step, "scheduler": scheduler.state_dict()}
    state.update(rng=rngs[0], extra=extra)
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
        _check_plain(tmp / STATE_FILE)
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
