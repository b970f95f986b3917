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

RewardKind = Literal["verifier", "python", "reward_model", "judge", "verdict"]


@dataclass(frozen=True)
class RewardComponentConfig:
    kind: RewardKind
    weight: float = 1.0
    name: str | None = None  # the metric is reward/<name>; default: the kind, or the function's name for python
    function: str | None = None  # python: "file.py:fn" (relative to the working directory) or "pkg.module:fn"
    path: str | None = None  # reward_model: a directory saved by `posttrain rm`; judge: a causal LM directory
    batch_size: int = 64  # reward_model: sequences per forward pass; judge: prompts per generation batch
    # judge (posttrain/rewards/judge.py): pointwise: its 0-10 score / 10; pairwise: both orders of each pair,
    # a verdict counts when they agree; the reward is the win rate within the group (or against the reference)
    mode: Literal["pointwise", "pairwise"] = "pointwise"
    template: str = "j1"  # judge: j1 (think, then the verdict), short (the tiny model's layout), or a template file
    against: Literal["group", "reference"] = "group"  # judge pairwise: the group's other samples, or the demonstration
    max_new_tokens: int = 256  # judge: tokens for its reasoning and verdict
    temperature: float = 0.0  # judge: sampling temperature of its verdicts (0: greedy)
    gpu_memory_utilization: float = 0.2  # judge beside a vLLM policy (engine.backend=vllm): its own vLLM's GPU share
    # reward.combine hero|gated: verifier (the 0/1 check) or dense (the score ranked inside each verifier
    # stratum); auto: a kind: verifier component is the verifier, the other one the dense score
    role: Literal["auto", "verifier", "dense"] = "auto"


@dataclass(frozen=True)
class HeroConfig:
    """``reward.combine: hero`` (Tao et al. 2025, arXiv 2510.07242): its stratified normalisation and weights."""

    alpha: float = 0.05  # verifier-wrong samples' dense scores rescaled into [-alpha, alpha]
    beta: float = 0.05  # verifier-correct samples' dense scores rescaled into [1 - beta, 1 + beta]
    eps: float = 1e-6  # added to each stratum's (max - min) of dense scores
    weighting: bool = True  # variance-aware prompt weight: w_min + (w_max - w_min) * sigmoid(k * (std - mean std))
    w_min: float = 0.4
    w_max: float = 3.0
    k: float = 6.0  # the sigmoid's slope


def _verifier() -> list[RewardComponentConfig]:
    return [RewardComponentConfig(kind="verifier")]


@dataclass(frozen=True)
class RewardConfig:
    components: list[RewardComponentConfig] = field(default_factory=_verifier)
    workers: int = 2  # worker processes (or Ray actors) that run the components which may hang
    timeout_s: float = 10.0  # per call in those workers; a slower call is a timeout, never a 0
    # weighted_sum: sum of weight * score; hero: the dense score normalised inside each verifier stratum of a
    # prompt's group, times a variance-aware prompt weight; gated: w_v * verifier + w_d * verifier * dense
    combine: Literal["weighted_sum", "hero", "gated"] = "weighted_sum"
    hero: HeroConfig = field(default_factory=HeroConfig)  # reward.combine=hero: its settings


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


def combine_roles(cfg: RewardConfig) -> tuple[int, int]:
    """(verifier, dense): the component indices ``reward.combine`` hero and gated read; ValueError in words.

    ``role`` names them; ``auto`` makes the one ``kind: verifier`` component the verifier and the
    other component the dense score. Exactly two components, one of each role.
    """
    comps = cfg.components
    if len(comps) != 2:
        raise ValueError(f"needs exactly two components, a verifier and a dense score (got {len(comps)})")
    roles = [c.role if c.role != "auto" else None for c in comps]
    if roles[0] is None and roles[1] is None:
        kinds = [c.kind == "verifier" for c in comps]
        if sum(kinds) != 1:
            raise ValueError("cannot tell the verifier from the dense score: give each component role: verifier|dense")
        v = kinds.index(True)
        return v, 1 - v
    if roles[0] is None or roles[1] is None:  # one named: the other takes the remaining role
        named = 0 if roles[0] is not None else 1
        v = named if roles[named] == "verifier" else 1 - named
        return v, 1 - v
    if roles[0] == roles[1]:
        raise ValueError(f"both components have role: {roles[0]}; one must be the verifier, the other dense")
    v = roles.index("verifier")
    return v, 1 - v


def _validate_combine(cfg: RewardConfig, need: Callable[[bool, str, str], None]) -> None:
    h = cfg.hero
    if cfg.combine == "weighted_sum":
        for i, c in enumerate(cfg.components):
            need(c.role == "auto", f"reward.components.{i}.role", "only reward.combine=hero or gated reads a role")
        return
    try:
        combine_roles(cfg)
    except ValueError as e:
        need(False, "reward.components", f"reward.combine={cfg.combine} {e}")
    need(h.alpha >= 0 and h.beta >= 0, "reward.hero.alpha", "alpha and beta must be >= 0")
    need(
        1 - h.beta > h.alpha,
        "reward.hero.beta",
        f"1 - beta must exceed alpha so every verified sample ranks above every other (alpha={h.alpha}, beta={h.beta})",
    )
    need(h.eps > 0, "reward.hero.eps", "must be > 0")
    need(0 <= h.w_min <= h.w_max, "reward.hero.w_min", f"must be in [0, w_max={h.w_max}]")
    need(h.k >= 0, "reward.hero.k", "must be >= 0")


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
        takes_path = c.kind in ("reward_model", "judge")
        need(takes_path or c.path is None, f"{key}.path", "only kind: reward_model or judge takes a path")
        if c.kind == "judge":
            need(c.path is not None, f"{key}.path", "kind: judge needs path: a causal LM directory (the judge)")
            need(c.max_new_tokens > 0, f"{key}.max_new_tokens", "must be > 0")
            need(c.temperature >= 0, f"{key}.temperature", "must be >= 0 (0 is greedy)")
            need(0 < c.gpu_memory_utilization < 1, f"{key}.gpu_memory_utilization", "must be in (0, 1)")
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
    _validate_combine(cfg, need)
