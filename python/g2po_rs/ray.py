"""Scale-out by task group over Ray tasks.

Task groups never influence each other, so a batch can be split by group,
each shard estimated by a Ray task (on any node of the cluster), and the
columns put back in row order: the result is identical, bit for bit, to
:func:`g2po_rs.estimate` in one process (GiGPO's batch-wide step-group ids are
renumbered in first-seen row order as the engine numbers them).

When it is worth it: the engine does a 102,400-row batch in a few
milliseconds on two cores, far less than it costs to ship that batch's
anchors (about 27 MB of text) to other processes. Sharding pays when the
batch is much larger than one machine handles in the time budget of a
training step, when the driver's cores are busy with other work, or when the
rows already live in Ray's object store on other nodes (pass ``ObjectRef``
shards through :func:`estimate_shards`). ``benchmarks/python/bench_compat.py
--ray`` and ``examples/ray_sharding.py`` measure the trade-off.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import Config, Estimate, _as_array, _native
from . import estimate as _estimate
from .errors import ConfigError

__all__ = ["estimate_sharded", "shard_rows"]

_COLUMNS = ("group", "traj", "step", "anchors", "keys", "reward", "episode_reward", "valid", "response_len")


def shard_rows(group: Any, num_shards: int) -> list[np.ndarray]:
    """Row indices (ascending) of ``num_shards`` shards holding whole task
    groups, balanced by row count (largest groups first onto the lightest
    shard). Shards may be empty when there are fewer groups than shards."""
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ConfigError(f"num_shards: expected an int >= 1, got {num_shards!r}", "num_shards")
    dense, n, _ = _native.factorize(_as_array(group, "group", ids=True), "group")
    sizes = np.bincount(dense, minlength=n)
    load = np.zeros(num_shards, dtype=np.int64)
    shard_of_group = np.empty(n, dtype=np.int64)
    for g in np.argsort(-sizes, kind="stable"):
        s = int(np.argmin(load))
        shard_of_group[g] = s
        load[s] += sizes[g]
    shard_of_row = shard_of_group[dense]
    return [np.flatnonzero(shard_of_row == s) for s in range(num_shards)]


def _remote_estimate():
    import ray

    @ray.remote
    def run(config: Config, columns: dict, num_threads: int | None) -> dict:
        est = _estimate(config, num_threads=num_threads, **columns)
        return est.to_dict()

    return run


def estimate_sharded(
    config: Config,
    *,
    num_shards: int,
    num_threads_per_task: int | None = 1,
    ray_options: dict | None = None,
    **columns: Any,
) -> Estimate:
    """:func:`g2po_rs.estimate` with the batch split by task group over
    ``num_shards`` Ray tasks (``ray.init`` must have been called). Takes the
    same columns as :func:`g2po_rs.estimate` and returns the same
    :class:`~g2po_rs.Estimate` (without a state graph: build graphs from an
    unsharded estimate). ``ray_options`` go to ``.options()`` of each task
    (e.g. ``{"num_cpus": 2}``)."""
    unknown = set(columns) - set(_COLUMNS)
    if unknown:
        raise ConfigError(f"unknown argument(s) {sorted(unknown)}", sorted(unknown)[0])
    cols = {k: _as_array(v, k, ids=k in ("group", "traj", "anchors")) for k, v in columns.items() if v is not None}
    rows = len(cols["group"])
    shards = [r for r in shard_rows(cols["group"], num_shards) if r.size]
    task = _remote_estimate()
    if ray_options:
        task = task.options(**ray_options)
    refs = [task.remote(config, {k: v[r] for k, v in cols.items()}, num_threads_per_task) for r in shards]
    import ray

    results = ray.get(refs)
    out: dict[str, np.ndarray] = {}
    for r, res in zip(shards, results):
        for name, values in res.items():
            if name not in out:
                out[name] = np.empty(rows, dtype=values.dtype)
            out[name][r] = values
    if config.estimator == "gigpo":
        # Step groups are numbered batch-wide in first-seen row order.
        offset = np.zeros(rows, dtype=np.int64)
        base = 0
        for r, res in zip(shards, results):
            offset[r] = base
            base += int(res["node"].max()) + 1
        ids = out["node"].astype(np.int64) + offset
        _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        rank = np.empty(first.size, dtype=np.int32)
        rank[np.argsort(first, kind="stable")] = np.arange(first.size, dtype=np.int32)
        out["node"] = rank[inverse]
    full = {c: out.get(c) for c in Estimate.COLUMNS}
    return Estimate(**full, _group=cols["group"])
