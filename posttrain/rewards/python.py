"""``kind: python``: a user's plain function as a reward component.

```python
def brevity(prompts, completions, examples):   # my_rewards.py
    return [1.0 - len(c) / 200 for c in completions]
```

The shape is TRL's reward function: lists in, one float (or None) per completion
out. It is called with keywords (``prompts=, completions=, examples=``) when its
signature takes them, so ``def f(completions, **kwargs)`` works too; otherwise
positionally. ``prompts`` are what the task asks (text, or chat messages);
``examples`` the task's ``Example`` records (``.answer`` is the gold answer).

User code may hang or crash, so every call runs in the deadline pool, one sample
per call: a hang costs its own sample (and under GRPO its group), nothing else.
The function travels to the worker as where it lives (a file or a module, and its
name) and is imported there once per worker, before the worker takes work. A
wrong-length result, a non-number or a non-finite number is an error for the
sample; None is a missing score (counted as ``missing``). Loading problems (no
such file, no such function, not callable, a signature that takes neither form)
are ``ConfigError`` on ``reward.components.N.function`` when the reward is built.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.config.reward import FunctionSpec, parse_function
from posttrain.errors import ConfigError
from posttrain.rewards.base import Job, describe
from posttrain.tasks.base import Example, Prompt

_KEYWORDS = ("prompts", "completions", "examples")


@dataclass(frozen=True)
class Located:
    """A function's address, resolved in the parent so any worker finds the same one."""

    function: str
    file: str | None = None  # absolute
    module: str | None = None
    root: str = "."  # the working directory at build time: a module may live under it


_LOADED: dict[Located, tuple[Callable[..., Any], bool]] = {}  # per process: (function, call with keywords)


def locate(spec: FunctionSpec) -> Located:
    if spec.file is not None:
        return Located(spec.function, file=str(Path(spec.file).resolve()))
    return Located(spec.function, module=spec.module, root=os.getcwd())


def _import_file(path: str) -> Any:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no file {path!r}")
    name = f"posttrain_reward_{Path(path).stem}_{hashlib.blake2b(path.encode(), digest_size=4).hexdigest()}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path!r} as Python")
    folder = str(Path(path).parent)
    if folder not in sys.path:  # its own helper modules next to it import, as when run as a script
        sys.path.append(folder)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so what it defines pickles and dataclasses resolve
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import_module(name: str, root: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:  # a package in the working directory, as `python -m` would find it
        if root in sys.path or e.name is None or not name.startswith(e.name):
            raise
        sys.path.append(root)
        return importlib.import_module(name)


def _keywords(fn: Callable[..., Any]) -> bool:
    """True: call with prompts=, completions=, examples=; False: positionally; TypeError: neither fits."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: try it positionally
        return False
    try:
        sig.bind(**dict.fromkeys(_KEYWORDS))
        return True
    except TypeError:
        pass
    try:
        sig.bind(None, None, None)
        return False
    except TypeError:
        raise TypeError(f"{sig} takes neither (prompts, completions, examples) nor three positional lists") from None


def load(where: Located) -> tuple[Callable[..., Any], bool]:
    """The function at ``where`` and how to call it, imported once per process."""
    if where not in _LOADED:
        module = _import_file(where.file) if where.file else _import_module(str(where.module), where.root)
        fn = getattr(module, where.function, None)
        if fn is None:
            raise AttributeError(f"{where.file or where.module} has no {where.function!r}")
        if not callable(fn):
            raise TypeError(f"{where.function!r} is a {type(fn).__name__}, not a function")
        _LOADED[where] = fn, _keywords(fn)
    return _LOADED[where]


def call(where: Located, prompts: list[Prompt], completions: list[str], examples: list[Example]) -> list[Any]:
    """The user's function on these samples: one value per completion, checked for length only."""
    fn, keywords = load(where)
    if keywords:
        values = fn(prompts=prompts, completions=completions, examples=examples)
    else:
        values = fn(prompts, completions, examples)
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(f"returned {type(values).__name__}, not a list with one score per completion")
    if len(values) != len(completions):
        raise ValueError(f"returned {len(values)} scores for {len(completions)} completions")
    return list(values)


def python_score(where: Located, prompt: Prompt, text: str, example: Example) -> Any:
    """One sample, in a worker: the value the function returned for it (the parent reads it as a score)."""
    return call(where, [prompt], [text], [example])[0]


class PythonComponent:
    """A user's function, called in the deadline pool one sample at a time."""

    isolate = True

    def __init__(self, function: str, name: str | None = None, field: str = "reward.function") -> None:
        try:
            self.where = locate(parse_function(function))
            load(self.where)  # here, before any training: its errors name the setting
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(f"cannot load {function!r}: {describe(e)}", field=field) from e
        self.name = name or self.where.function

    def warmup(self) -> Job:
        """What a worker runs before it takes work: the import, which no deadline should include."""
        return load, (self.where,)

    def score(self, examples: list[Example], prompts: list[Prompt], texts: list[str]) -> list[Any]:
        return call(self.where, prompts, texts, examples)

    def job(self, example: Example, prompt: Prompt, text: str) -> Job:
        return python_score, (self.where, prompt, text, example)
