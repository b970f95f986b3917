"""Where the per-row work runs: this process, or Ray Data (``datagen.backend``).

Each command splits into a pure per-row map (normalise and hash a row, MinHash it,
find its n-grams in the evaluation index, score its lines) and a decision over the
mapped values in input order (keep the first of each duplicate set). Only the map is
distributed: on Ray it is a ``map_batches`` over an actor pool of ``datagen.workers``
actors, each holding the map's state (an n-gram index, a model) once, and the results
come back sorted by row index, so the decisions and outputs are identical to an
in-process run.

Rows and results travel pickled, as bytes: Arrow would otherwise try to infer one
schema for nested Python values (tuples of hashes, message lists) that need none.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

from posttrain.config import DatagenConfig
from posttrain.errors import ConfigError

BatchFn = Callable[[list[Any]], list[Any]]  # items -> one result per item, same order


def map_batches(make: Callable[[], BatchFn], items: list[Any], cfg: DatagenConfig) -> list[Any]:
    """``fn(items)`` where ``fn = make()``: in this process, or in ``cfg.workers`` Ray Data actors.

    ``make`` is called once per actor (once here), so heavy state is built where it is used;
    it must be picklable (a top-level function or class, or a ``functools.partial`` of one).
    """
    if cfg.backend == "local" or not items:
        fn = make()
        out = []
        for start in range(0, len(items), cfg.batch_size):
            out.extend(fn(items[start : start + cfg.batch_size]))
        return out
    return _ray_map(make, items, cfg)


class _Actor:
    """A Ray Data actor: builds the map once, then maps pickled batches."""

    def __init__(self, make: Callable[[], BatchFn]) -> None:
        self.fn = make()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        items = [pickle.loads(b) for b in batch["item"]]
        results = self.fn(items)
        return {"index": batch["index"], "result": [pickle.dumps(r) for r in results]}


def _ray_map(make: Callable[[], BatchFn], items: list[Any], cfg: DatagenConfig) -> list[Any]:
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise ConfigError(
            "datagen.backend=ray needs Ray Data: pip install 'posttrain[ray]'", field="datagen.backend"
        ) from e
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ds = ray.data.from_items([{"index": i, "item": pickle.dumps(x)} for i, x in enumerate(items)])
    mapped = ds.map_batches(
        _Actor,
        fn_constructor_args=(make,),
        batch_size=cfg.batch_size,
        batch_format="numpy",
        concurrency=cfg.workers,
        num_cpus=0.5,  # two actors fit on a small machine beside the driver
    )
    out: list[Any] = [None] * len(items)
    for row in mapped.iter_rows():
        out[int(row["index"])] = pickle.loads(row["result"])
    return out
