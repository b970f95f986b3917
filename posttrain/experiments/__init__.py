"""The named experiments shipped with the package: one ``<name>.yaml`` overlay each, next to this file.

``posttrain run`` with no ``--config`` uses ``quickstart``; ``--config NAME`` picks any of
them by name (``posttrain compare --config compare-dpo-grpo``). From Python::

    from posttrain import experiments, load_config
    cfg = load_config(experiments.path("quickstart"), stage="sft")

They are package data (pyproject's ``package-data``), so a wheel install has them too.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from posttrain.errors import ConfigError

SUFFIX = ".yaml"


def names() -> list[str]:
    """The packaged experiments' names, sorted: ``["compare-dpo-grpo", "predict-rl", "quickstart"]``."""
    root = resources.files(__name__)
    return sorted(p.name[: -len(SUFFIX)] for p in root.iterdir() if p.name.endswith(SUFFIX) and p.is_file())


def path(name: str) -> Path:
    """The YAML file of the packaged experiment ``name`` (``quickstart`` or ``quickstart.yaml``).

    An unknown name is a ``ConfigError`` that lists the packaged ones.
    """
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    known = names()
    if stem not in known:
        raise ConfigError(f"no packaged experiment {name!r} (packaged: {', '.join(known)})")
    # a wheel or editable install unpacks to real files; str() of the traversable is their path
    return Path(str(resources.files(__name__) / f"{stem}{SUFFIX}"))
