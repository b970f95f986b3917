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
from collections.abc import Callable, Iterator
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


def map_stream(
    make: Callable[[], BatchFn], items: list[Any], cfg: DatagenConfig, batch_size: int = 1
) -> Iterator[tuple[int, Any]]:
    """``(index, fn([item])[0])`` for every item as each finishes: in order here, in any order on Ray.

    For work whose results are written as they come (synth's shards: a killed run keeps every
    shard already back); ``batch_size`` items go to an actor at a time.
    """
    if not items:
        return
    if cfg.backend == "local":
        fn = make()
        for i, item in enumerate(items):
            yield i, fn([item])[0]
        return
    for row in _ray_dataset(make, items, cfg, batch_size).iter_rows():
        yield int(row["index"]), pickle.loads(row["result"])


class _Actor:
    """A Ray Data actor: builds the map once, then maps pickled batches."""

    def __init__(self, make: Callable[[], BatchFn]) -> None:
        self.fn = make()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        items = [pickle.loads(b) for b in batch["item"]]
        results = self.fn(items)
        return {"index": batch["index"], "result": [pickle.dumps(r) for r in results]}


def _ray_map(make: Callable[[], BatchFn], items: list[Any], cfg: DatagenConfig) -> list[Any]:
    out: list[Any] = [None] * len(items)
    for row in _ray_dataset(make, items, cfg, cfg.batch_size).iter_rows():
        out[int(row["index"])] = pickle.loads(row["result"])
    return out


def _ray_dataset(make: Callable[[], BatchFn], items: list[Any], cfg: DatagenConfig, batch_size: int) -> Any:
    """The Ray Data pipeline: pickled items, mapped in batches by ``cfg.workers`` actors built by ``make``."""
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
    return ds.map_batches(
        _Actor,
        fn_constructor_args=(make,),
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=cfg.workers,
        num_cpus=0.5,  # two actors fit on a small machine beside the driver
    )
