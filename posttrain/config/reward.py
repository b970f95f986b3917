"""The ``reward`` section: a weighted list of reward components.

```yaml
reward:
  components:
    - {kind: verifier, weight: 1.0}
    - {kind: python, function: my_rewards.py:brevity, weight: 0.2}   # or pkg.module:fn
    - {kind: reward_model, path: runs/rm/final, weight: 0.5}
  workers: 2        # deadline worker processes (verifiers that may hang, python functions)
  timeout_s: 10.0   # per call; a call past it leaves its sample unscored, never 0
```

A sample's reward is the weighted sum of its components; a component that fails
for a sample leaves the sample unscored (``posttrain.rewards``). This module only
describes and checks the settings: it imports no user code (``build_reward`` does).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

RewardKind = Literal["verifier", "python", "reward_model"]


@dataclass(frozen=True)
class RewardComponentConfig:
    kind: RewardKind
    weight: float = 1.0
    name: str | None = None  # the metric is reward/<name>; default: the kind, or the function's name for python
    function: str | None = None  # python: "file.py:fn" (relative to the working directory) or "pkg.module:fn"
    path: str | None = None  # reward_model: a directory saved by `posttrain rm`
    batch_size: int = 64  # reward_model: sequences per forward pass


def _verifier() -> list[RewardComponentConfig]:
    return [RewardComponentConfig(kind="verifier")]


@dataclass(frozen=True)
class RewardConfig:
    components: list[RewardComponentConfig] = field(default_factory=_verifier)
    workers: int = 2  # worker processes (or Ray actors) that run the components which may hang
    timeout_s: float = 10.0  # per call in those workers; a slower call is a timeout, never a 0


@dataclass(frozen=True)
class FunctionSpec:
    """Where a ``kind: python`` function lives: a file or an importable module, and the name in it."""

    function: str  # the name inside the file or module
    file: str | None = None  # as written; resolved against the working directory
    module: str | None = None


def parse_function(text: str) -> FunctionSpec:
    """``"file.py:fn"`` or ``"pkg.module:fn"``; ValueError with the expected form otherwise."""
    where, sep, name = text.rpartition(":")
    if not sep or not where.strip() or not name.strip().isidentifier():
        raise ValueError(f"expected file.py:function or package.module:function, got {text!r}")
    where, name = where.strip(), name.strip()
    if where.endswith(".py") or "/" in where or "\\" in where:
        return FunctionSpec(name, file=where)
    if not all(part.isidentifier() for part in where.split(".")):
        raise ValueError(f"{where!r} is neither a .py file nor a dotted module path")
    return FunctionSpec(name, module=where)


def component_name(c: RewardComponentConfig) -> str:
    """The component's metric name: ``name``, else the python function's name, else the kind."""
    if c.name:
        return c.name
    if c.kind == "python" and c.function:
        try:
            return parse_function(c.function).function
        except ValueError:
            return c.kind
    return c.kind


def validate_reward(cfg: RewardConfig, need: Callable[[bool, str, str], None]) -> None:
    """Checks that read no user code: ``build_reward`` imports the python functions and names their errors."""
    need(cfg.workers > 0, "reward.workers", "must be > 0")
    need(cfg.timeout_s > 0, "reward.timeout_s", "must be > 0 seconds")
    need(bool(cfg.components), "reward.components", "needs at least one component")
    seen: dict[str, int] = {}
    for i, c in enumerate(cfg.components):
        key = f"reward.components.{i}"
        need(math.isfinite(c.weight), f"{key}.weight", "must be a finite number")
        need(c.kind == "python" or c.function is None, f"{key}.function", "only kind: python takes a function")
        need(c.kind == "reward_model" or c.path is None, f"{key}.path", "only kind: reward_model takes a path")
        need(c.batch_size > 0, f"{key}.batch_size", "must be > 0")
        if c.kind == "python":
            need(c.function is not None, f"{key}.function", "kind: python needs function: file.py:fn or pkg.module:fn")
            assert c.function is not None
            try:
                spec = parse_function(c.function)
            except ValueError as e:
                need(False, f"{key}.function", str(e))
                raise  # pragma: no cover - need raised
            if spec.file is not None:
                need(
                    Path(spec.file).is_file(),
                    f"{key}.function",
                    f"no file {spec.file!r} (relative to the working directory)",
                )
        if c.kind == "reward_model":
            need(
                c.path is not None, f"{key}.path", "kind: reward_model needs path: a directory saved by `posttrain rm`"
            )
        name = component_name(c)
        need(
            name not in seen,
            f"{key}.name",
            f"components {seen.get(name)} and {i} are both named {name!r}: give one a name (it is the metric reward/<name>)",
        )
        seen[name] = i
