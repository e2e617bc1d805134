"""Sharding a trainer's batch by task group over Ray tasks.

Builds a batch of G task groups x 8 rollouts x 50 steps (uuid ids, int64 state
keys), estimates G2PO advantages in this process and over Ray tasks, checks
that both are identical, and prints both times:

    python python/examples/ray_sharding.py --groups 256 --shards 2

On one small machine the sharded call is slower (shipping the columns to the
workers costs more than the engine's few milliseconds); it pays off when the
batch is far larger than one machine handles per training step, or when the
driver's cores are busy.
"""

from __future__ import annotations

import argparse
import time
import uuid

import numpy as np
import ray

import g2po_rs
from g2po_rs.ray import estimate_sharded


def batch(groups: int, n: int = 8, steps: int = 50, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    rows = groups * n * steps
    uid = np.empty(rows, dtype=object)
    traj = np.empty(rows, dtype=object)
    uid[:] = np.repeat([str(uuid.uuid4()) for _ in range(groups)], n * steps)
    traj[:] = np.repeat([str(uuid.uuid4()) for _ in range(groups * n)], steps)
    shared = rng.random(rows) < 0.5
    keys = np.where(shared, np.repeat(np.arange(groups), n * steps) * 1000 + rng.integers(0, 40, rows),
                    10**9 + np.arange(rows)).astype(np.int64)
    episode = np.repeat(np.where(rng.random(groups * n) < 0.5, 10.0, 0.0), steps)
    return dict(group=uid, traj=traj, keys=keys, episode_reward=episode, valid=rng.random(rows) > 0.1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", type=int, default=256)
    ap.add_argument("--shards", type=int, default=2)
    args = ap.parse_args()
    cols = batch(args.groups)
    cfg = g2po_rs.Config("g2po")
    ray.init(include_dashboard=False, log_to_driver=False)
    start = time.perf_counter()
    local = g2po_rs.estimate(cfg, **cols)
    t_local = time.perf_counter() - start
    estimate_sharded(cfg, num_shards=args.shards, **cols)  # warm the workers
    start = time.perf_counter()
    sharded = estimate_sharded(cfg, num_shards=args.shards, **cols)
    t_sharded = time.perf_counter() - start
    for name, values in local.to_dict().items():
        assert np.array_equal(getattr(sharded, name), values), name
    rows = len(cols["group"])
    print(f"{rows} rows: one process {1e3 * t_local:.1f} ms, {args.shards} Ray tasks {1e3 * t_sharded:.1f} ms; "
          "results identical")
    ray.shutdown()


if __name__ == "__main__":
    main()
