"""The evaluation cache: samples and scores, keyed by what determines them.

Sampling a few hundred completions per problem is the expensive part of an
evaluation, and rerunning one (a new report, a larger k, another predictor)
should not redo it. An entry is a directory named by the hash of its key:

- the model: a SHA-256 over its weight files' bytes (every ``*.safetensors``,
  ``*.bin`` and shard index) and the config, generation-config and tokenizer
  files, so a checkpoint saved twice with the same weights shares entries while
  one changed byte does not; plus the dtype, the device and the sampler's decode
  path (static-cache or generic) the samples were drawn with;
- the problems: a hash of each problem's id, prompt and gold answer, in order;
- the sampling settings: temperature, top-p, maximum new tokens, seed, chunk size,
  generation batch size (rows of one batch share a random stream) and the torch
  version (its sampler's numerics).

Inside, ``chunk_00003.json.gz`` holds chunk 3 of every problem's samples and
``scores-<checker>-00003.json.gz`` their checks under one answer checker, so a new
verifier re-scores without re-sampling. Files are written then renamed, so an
interrupted evaluation leaves whole chunks behind and the next one continues.

Hashing large weights is not free, so each file's digest is memoised in
``hashes.json`` under (absolute path, size, modification time).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path
from typing import Any

# files of a model directory that change what it generates
_TOKENIZER_FILES = ("tokenizer*", "special_tokens_map.json", "vocab*", "merges.txt", "*.model", "chat_template*")
# adapter_config.json: a LoRA run's scaling (alpha / r) and the absolute path of the base the adapters sit on
_MODEL_FILES = ("*.safetensors", "*.bin", "*.index.json", "config.json", "generation_config.json", "adapter_config.json",
                *_TOKENIZER_FILES)  # fmt: skip
_CHUNK = 1 << 24


def digest(value: Any) -> str:
    """A short stable hash of a JSON-serialisable value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:24]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def tokenizer_hash(model_dir: str | Path) -> str:
    """SHA-256 over a model directory's tokenizer files: per-token losses compare only within one tokenizer."""
    return model_hash(model_dir, patterns=_TOKENIZER_FILES)


def model_hash(model_dir: str | Path, memo: Path | None = None, patterns: tuple[str, ...] = _MODEL_FILES) -> str:
    """SHA-256 over the generation-relevant files of a model directory (names and bytes).

    ``memo`` is a JSON file remembering each file's digest by (path, size, mtime),
    so a second evaluation of a 10 GB checkpoint does not read it again.
    """
    root = Path(model_dir)
    files = sorted({p for pattern in patterns for p in root.glob(pattern) if p.is_file()})
    if not files:
        raise FileNotFoundError(f"no model files to hash in {root}")
    known: dict[str, str] = _read_json(memo) if memo is not None else {}
    h = hashlib.sha256()
    changed = False
    for path in files:
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in known:
            known[key] = _file_sha256(path)
            changed = True
        h.update(f"{path.name}\0{known[key]}\n".encode())
    if memo is not None and changed:
        write_json(memo, known)
    return h.hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # a missing or damaged memo only costs a re-hash
    return data if isinstance(data, dict) else {}


def write_json(path: Path, value: Any, compress: bool = False) -> None:
    """Write ``value`` as JSON via a temporary file and a rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    data = json.dumps(value, ensure_ascii=False).encode()
    tmp.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    os.replace(tmp, path)


class SampleCache:
    """One cache entry: the chunks of samples, and their scores, for one key."""

    def __init__(self, root: str | Path, key: dict[str, Any], enabled: bool = True) -> None:
        self.enabled = enabled
        self.key = key
        self.dir = Path(root) / digest(key)
        if enabled and not (self.dir / "key.json").is_file():
            write_json(self.dir / "key.json", key)  # for a human wondering what an entry is

    def _load(self, name: str) -> Any | None:
        path = self.dir / name
        if not self.enabled or not path.is_file():
            return None
        try:
            return json.loads(gzip.decompress(path.read_bytes()))
        except (OSError, EOFError, json.JSONDecodeError):
            return None  # a damaged entry is recomputed, never trusted

    def _save(self, name: str, value: Any) -> None:
        if self.enabled:
            write_json(self.dir / name, value, compress=True)

    def samples(self, chunk: int) -> Any | None:
        return self._load(f"chunk_{chunk:05d}.json.gz")

    def save_samples(self, chunk: int, value: Any) -> None:
        self._save(f"chunk_{chunk:05d}.json.gz", value)

    def scores(self, checker: str, chunk: int) -> Any | None:
        return self._load(f"scores-{checker}-{chunk:05d}.json.gz")

    def save_scores(self, checker: str, chunk: int, value: Any) -> None:
        self._save(f"scores-{checker}-{chunk:05d}.json.gz", value)

    def value(self, name: str) -> Any | None:
        """Any other cached JSON value of this entry (greedy samples, held-out loss)."""
        return self._load(f"{name}.json.gz")

    def save_value(self, name: str, value: Any) -> None:
        self._save(f"{name}.json.gz", value)
