"""Configuration: frozen nested dataclasses, YAML overlays and dotted overrides.

Defaults live in code. A named experiment (``posttrain/experiments/*.yaml``, ``--config NAME``) is a short overlay;
the command line adds ``section.key=value`` overrides on top. Unknown keys fail
with the nearest valid key suggested, wrong types fail with the file and line of
the offending key, and sizes that must divide each other are checked at load.

A config file may hold a ``stages`` mapping (``stages.sft``, ``stages.grpo``): the
overlay for one stage of a pipeline, merged over the rest of the file when that
stage runs. ``posttrain sft --config quickstart`` therefore trains
with exactly the settings ``posttrain run`` uses for its SFT stage.

Key and type checks of one mapping live in ``posttrain.config.build``, the checks that involve
more than one value in ``posttrain.config.checks``; this module reads files and overrides and
merges stages.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from posttrain.config import model_defaults
from posttrain.config.build import RENAMED as RENAMED  # the old-key table, where users and tests look for it
from posttrain.config.build import Source as _Source
from posttrain.config.build import build, unknown_key
from posttrain.config.checks import validate
from posttrain.config.reward import RewardComponentConfig, RewardConfig
from posttrain.config.sections import (
    STAGES,
    AdaptiveConfig,
    AggregationConfig,
    ArithmeticConfig,
    CompareConfig,
    Config,
    DataConfig,
    DatagenConfig,
    DistConfig,
    DPOConfig,
    EngineConfig,
    EvalConfig,
    GRPOConfig,
    LengthInstructionsConfig,
    LoggingConfig,
    LoraConfig,
    MixedDecodingConfig,
    ModelConfig,
    OptimConfig,
    PredictConfig,
    RolloutConfig,
    SamplingConfig,
    TinyModelConfig,
    TrainConfig,
)
from posttrain.errors import ConfigError

__all__ = [
    "STAGES",
    "AdaptiveConfig",
    "AggregationConfig",
    "ArithmeticConfig",
    "CompareConfig",
    "Config",
    "DataConfig",
    "MixedDecodingConfig",
    "DatagenConfig",
    "DistConfig",
    "DPOConfig",
    "EngineConfig",
    "EvalConfig",
    "GRPOConfig",
    "LengthInstructionsConfig",
    "LoggingConfig",
    "LoraConfig",
    "ModelConfig",
    "OptimConfig",
    "PredictConfig",
    "RewardComponentConfig",
    "RewardConfig",
    "RolloutConfig",
    "SamplingConfig",
    "TinyModelConfig",
    "TrainConfig",
    "apply_overlay",
    "load_config",
    "override",
    "parse_override",
    "to_dict",
    "validate",
]


# ---------------------------------------------------------------------------
# Loading


def _record_lines(node: yaml.Node, prefix: str, file: str, src: _Source) -> None:
    """Note the line of every key, refusing a key given twice in one mapping (YAML keeps the last silently)."""
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            line = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in first:
                    message = f"duplicate key {key_node.value!r} (first at line {first[key_node.value]})"
                    raise ConfigError(message, file=file, line=line, field=key)
                first[key_node.value] = line
            src.lines[key] = (file, line)
            _record_lines(value_node, key + ".", file, src)
    elif isinstance(node, yaml.SequenceNode):  # list items are numbered: reward.components.1.kind
        for i, item in enumerate(node.value):
            src.lines[f"{prefix}{i}"] = (file, item.start_mark.line + 1)
            _record_lines(item, f"{prefix}{i}.", file, src)


def _read_yaml(path: Path, src: _Source) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError("config file not found", file=str(path))
    text = path.read_text()
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"invalid YAML: {problem}", file=str(path), line=line) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of sections", file=str(path), line=1)
    if node is not None:
        _record_lines(node, "", str(path), src)
    return data


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = data
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value", file="command line")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has no key", file="command line")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_config(
    path: str | Path | dict[str, Any] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    stage: str | None = None,
    explain: list[str] | None = None,
) -> Config:
    """Build a validated ``Config`` from an optional YAML file (or a nested dict) and dotted overrides.

    Keys left out take the code defaults, except those a real model changes
    (``posttrain.config.model_defaults``); each of those is said in ``explain``, when given.

    A dict is read as a file's contents would be, with the same checks and messages,
    ``dict`` standing for the file name: ``{"optim": {"lr": 3e-4}, "stages": {...}}``.

    With ``stage`` set, the file's ``stages.<stage>`` overlay is merged over the
    rest of the file, and the command-line overrides are applied last, so
    ``optim.lr=...`` on the command line always wins. Every stage overlay is
    validated whichever stage runs, so a typo fails before earlier stages spend
    their minutes.
    """
    src = _Source()
    if path is None:
        data: dict[str, Any] = {}
    elif isinstance(path, (str, Path)) or hasattr(path, "__fspath__"):  # any os.PathLike
        data = _read_yaml(Path(path), src)
    else:
        data = _read_mapping(path, src)
    parsed = [parse_override(text) for text in overrides]
    for key, value in parsed:
        src.lines[key] = ("command line", None)
        _set_dotted(data, key, value)
    notes: dict[str | None, list[str]] = {None: []}
    cfg = model_defaults.resolve(build(Config, data, "", src), data, stage, notes[None])
    validate(cfg, src)
    staged = {}
    for name, overlay in cfg.stages.items():
        if name not in STAGES:
            raise unknown_key("stages", name, STAGES, src)
        if not isinstance(overlay, dict):
            file, line = src.where(f"stages.{name}")
            raise ConfigError("a stage overlay must be a mapping", file=file, line=line, field=f"stages.{name}")
        staged[name] = _stage_config(data, name, parsed, src, notes.setdefault(name, []))
    if explain is not None:
        explain.extend(notes[stage] if stage in staged else notes[None])
    return staged.get(stage, cfg) if stage is not None else cfg


def _stage_config(
    data: dict[str, Any], name: str, parsed: list[tuple[str, Any]], src: _Source, notes: list[str]
) -> Config:
    merged = _merge({k: v for k, v in data.items() if k != "stages"}, data["stages"][name])
    for key, value in parsed:
        if not key.startswith("stages."):
            _set_dotted(merged, key, value)
    merged["stages"] = data["stages"]
    prefix = f"stages.{name}."
    stage_src = _Source()
    stage_src.lines = {k: v for k, v in src.lines.items() if not k.startswith("stages.")}
    stage_src.lines.update({k[len(prefix) :]: v for k, v in src.lines.items() if k.startswith(prefix)})
    stage_src.lines.update({k: ("command line", None) for k, _ in parsed if not k.startswith("stages.")})
    cfg = model_defaults.resolve(build(Config, merged, "", stage_src), merged, name, notes)
    validate(cfg, stage_src)
    return cfg


def to_dict(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def apply_overlay(cfg: Config, overlay: dict[str, Any]) -> Config:
    """``cfg`` with the nested mapping ``overlay`` merged over it, checked like a config file."""
    out = build(Config, _merge(to_dict(cfg), overlay), "", _Source())
    validate(out)
    return out


# ---------------------------------------------------------------------------
# The notebook API: a dict as the config, a nested override in one call

DICT = "dict"  # the "file" an error in a config given as a dict names
OVERRIDE = "override"  # the "file" an error in an override() assignment names


def _plain(value: Any) -> Any:
    """Nested mappings as dicts (``build`` reads dicts), copied so the caller's object is never changed."""
    from collections.abc import Mapping

    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _record_keys(data: Any, prefix: str, src: _Source) -> None:
    """Every key of an in-memory config, located at ``dict``, numbered in lists as a file's are."""
    if isinstance(data, dict):
        for key, value in data.items():
            src.lines[f"{prefix}{key}"] = (DICT, None)
            _record_keys(value, f"{prefix}{key}.", src)
    elif isinstance(data, list):
        for i, item in enumerate(data):
            src.lines[f"{prefix}{i}"] = (DICT, None)
            _record_keys(item, f"{prefix}{i}.", src)


def _read_mapping(data: Any, src: _Source) -> dict[str, Any]:
    """``load_config``'s dict argument: the contents a YAML file would have held."""
    from collections.abc import Mapping

    if not isinstance(data, Mapping):
        raise ConfigError(
            f"a config is a YAML file's path or a dict of sections, got {type(data).__name__}", file=DICT, line=None
        )
    out: dict[str, Any] = _plain(data)
    _record_keys(out, "", src)
    return out


def override(cfg: Config, *assignments: str) -> Config:
    """A new, validated ``cfg`` with dotted ``section.key=value`` assignments applied, as on the command line.

    ``override(cfg, "optim.lr=3e-4", "grpo.kl_coef=0.01")``; a bad key or value is a one-line
    ``ConfigError`` naming it (``override: optim.lrr: unknown key 'lrr'; did you mean 'lr'?``).
    ``cfg`` itself is unchanged (it is frozen).
    """
    src = _Source()
    data = to_dict(cfg)
    for text in assignments:
        if not isinstance(text, str) or "=" not in text:
            raise ConfigError(f"{text!r} is not of the form section.key=value", file=OVERRIDE)
        try:
            key, value = parse_override(text)
        except ConfigError as e:
            raise ConfigError(e.message, file=OVERRIDE) from None
        src.lines[key] = (OVERRIDE, None)
        _set_dotted(data, key, value)
    out = build(Config, data, "", src)
    validate(out, src)
    return out
