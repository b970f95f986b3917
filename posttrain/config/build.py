"""Turning nested mappings into the config dataclasses: key and type checks, with file:line.

``build(cls, data, prefix, src)`` checks every key against the schema
(``posttrain.config.sections``), suggests the nearest valid key, names the new key of
a renamed one (``RENAMED``), and coerces each value to its field's type. ``Source``
remembers where each dotted key was written, so every error names a file and line.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal

from posttrain.errors import ConfigError


class Source:
    """Where each dotted key came from, so errors can name a file and line."""

    def __init__(self) -> None:
        self.lines: dict[str, tuple[str, int | None]] = {}

    def where(self, key: str) -> tuple[str | None, int | None]:
        if key in self.lines:
            return self.lines[key]
        # an error on a nested key is reported at its closest recorded parent
        while "." in key:
            key = key.rsplit(".", 1)[0]
            if key in self.lines:
                return self.lines[key]
        return None, None


# Keys of earlier releases, each with the key (or setting) that replaced it: a config that
# still uses one fails with one line naming its new home instead of a bare "unknown key".
RENAMED: dict[str, str] = {
    "grpo.prompts_per_step": "rollout.prompts_per_step",
    "grpo.samples_per_prompt": "rollout.samples_per_prompt",
    "grpo.std_normalize": "grpo.advantage (grpo: with the group std, dr_grpo: without)",
    "grpo.reward": "reward.components (e.g. [{kind: reward_model, path: DIR}])",
    "grpo.reward_model_path": "reward.components ({kind: reward_model, path: DIR})",
    "rollout.scorer": "reward.components (e.g. [{kind: reward_model, path: DIR}])",
    "rollout.reward_model_path": "reward.components ({kind: reward_model, path: DIR})",
    "rollout.pairs": "dpo.pairs",
    "rollout.reference": "rollout.ref_sync_every (0: fixed; equal to rollout.sync_every: synced with the sampler)",
    "rollout.backend": "engine.backend",
    "rollout.workers": "engine.workers",
    "rollout.sync_timeout_s": "engine.sync_timeout_s",
    "rollout.generate_timeout_s": "engine.generate_timeout_s",
    "rollout.address": "engine.address",
    "rollout.gpu_memory_utilization": "engine.gpu_memory_utilization",
    "rollout.enforce_eager": "engine.enforce_eager",
    "rollout.reward_workers": "reward.workers",
    "rollout.reward_timeout_s": "reward.timeout_s",
    "train.log_every": "nothing: every step is logged (remove the key)",
    "eval.temperature": "eval.sampling.temperature",
    "eval.top_p": "eval.sampling.top_p",
    "eval.max_new_tokens": "eval.sampling.max_new_tokens",
    "eval.batch_size": "engine.batch_size (one engine samples for training and evaluation)",
    "eval.check_timeout_s": "reward.timeout_s (one deadline pool checks answers in training and evaluation)",
    "eval.check_workers": "reward.workers (one deadline pool checks answers in training and evaluation)",
}


def unknown_key(prefix: str, key: str, valid: typing.Iterable[str], src: Source) -> ConfigError:
    dotted = f"{prefix}.{key}" if prefix else key
    file, line = src.where(dotted)
    renamed = RENAMED.get(dotted) or RENAMED.get(dotted.split(".", 2)[-1] if dotted.startswith("stages.") else "")
    if renamed:
        return ConfigError(f"{key!r} was renamed: use {renamed}", file=file, line=line, field=dotted)
    valid = list(valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown key {key!r}{hint}", file=file, line=line, field=dotted)


def build(cls: type, data: Any, prefix: str, src: Source) -> Any:
    """Turn a nested dict into the dataclass ``cls``, checking keys and types."""
    if not isinstance(data, dict):
        file, line = src.where(prefix)
        raise ConfigError(f"expected a mapping, got {data!r}", file=file, line=line, field=prefix or None)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise unknown_key(prefix, str(key), names, src)
        dotted = f"{prefix}.{key}" if prefix else key
        kwargs[key] = _coerce(hints[key], value, dotted, src)
    return cls(**kwargs)


_BOOL_WORDS = {False: ("no", "false", "off"), True: ("yes", "true", "on")}


def _coerce(tp: Any, value: Any, dotted: str, src: Source) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def fail(expected: str) -> ConfigError:
        file, line = src.where(dotted)
        return ConfigError(f"expected {expected}, got {value!r}", file=file, line=line, field=dotted)

    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        required = [
            f.name for f in dataclasses.fields(tp)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]  # fmt: skip
        absent = [k for k in required if isinstance(value, dict) and k not in value]
        if absent:  # a list item such as reward.components.1 without its kind
            file, line = src.where(dotted)
            raise ConfigError(f"missing key {absent[0]!r}", file=file, line=line, field=dotted)
        return build(tp, value, dotted, src)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, dotted, src)
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads no/yes/off/on as booleans: mixed_precision=no
            value = next((w for w in _BOOL_WORDS[value] if w in args), value)
        if value not in args:
            file, line = src.where(dotted)
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{value!r} is not one of {choices}{hint}", file=file, line=line, field=dotted)
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise fail("a mapping")
        return dict(value)
    if origin is list:  # each item checked against the item type, its errors named key.<index>
        if not isinstance(value, list):
            raise fail("a list")
        return [_coerce(args[0], item, f"{dotted}.{i}", src) for i, item in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise fail("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        value = float(value)
        if not math.isfinite(value):  # inf, nan, 1e999: no setting means them, and NaN weights follow
            raise fail("a finite number")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise fail("a string")
        return str(value)
    raise fail(str(tp))  # pragma: no cover - a schema type we do not handle
