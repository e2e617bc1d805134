"""Python-side benchmark of g2po_rs: the compat G2PO and GiGPO calls end to end
(as verl-agent / the G2PO fork call them: string ids, text anchors, torch
tensors in and out) and the native call with int64 keys, beside the Rust
engine's own time on the same batch.

Workload (the engine benchmark's shape): 256 tasks x 8 rollouts x 50 steps =
102,400 rows; uuid4 group and trajectory ids (numpy object arrays, one str
object per id repeated, as after Ray's pickling); ALFWorld-like anchors of
about 270 characters as a numpy object array (with probability 1/2 one of 40
states shared within the task, else a state no other row visits); episode
rewards as an object array of np.float32, validity as one of np.bool_; the
token tensors torch float32 / int64 [rows, L]. Between the two phases the
rows are permuted, as verl's batch balancing does (that indexing is the
trainer's and is done before the timed calls; indexing phase one's three
numeric outputs is inside them).

Run (from the repository root, g2po_rs installed):

    RAYON_NUM_THREADS=2 python benchmarks/python/bench_compat.py            # L = 32
    RAYON_NUM_THREADS=2 python benchmarks/python/bench_compat.py --L 512 --repeats 7

Prints the median of --repeats runs of each measurement (after one warm-up),
and with --json FILE writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import types
import uuid

import numpy as np


def workload(tasks: int, n: int, steps: int, L: int, seed: int = 0):
    import torch

    rng = np.random.default_rng(seed)
    filler = (
        "You are in the middle of a room. Looking quickly around you, you see a cabinet 6, a cabinet 5, a "
        "cabinet 4, a cabinet 3, a cabinet 2, a cabinet 1, a coffeemachine 1, a countertop 3, a countertop 2, "
        "a countertop 1, a drawer 3, a drawer 2, a drawer 1, a fridge 1, a garbagecan 1. Your task is: "
    )
    uids, trajs, anchors = [], [], []
    unique = 0
    for t in range(tasks):
        u = str(uuid.uuid4())
        for _ in range(n):
            tr = str(uuid.uuid4())
            for _ in range(steps):
                uids.append(u)
                trajs.append(tr)
                if rng.random() < 0.5:
                    anchors.append(f"{filler}task {t} state {int(rng.integers(40)):04d}")
                else:
                    unique += 1
                    anchors.append(f"{filler}task {t} unique {unique:08d}")
    rows = len(uids)

    def obj(values):
        a = np.empty(len(values), dtype=object)
        a[:] = values
        return a

    # Identical anchor texts of one state share nothing in memory (as after
    # pickling), but ids repeat one object per id.
    uid, traj = obj(uids), obj(trajs)
    success = rng.random(tasks * n) < 0.5
    ep = np.repeat(np.where(success, 10.0, 0.0), steps).astype(np.float32)
    valid = rng.random(rows) >= 0.1
    rewards = np.zeros(rows, dtype=np.float32)
    rewards[steps - 1 :: steps] = ep[steps - 1 :: steps]
    lens = rng.integers(1, L + 1, size=rows)
    mask = (np.arange(L)[None, :] < lens[:, None]).astype(np.int64)
    tlr = np.zeros((rows, L), dtype=np.float32)
    tlr[np.arange(rows), lens - 1] = ep - 0.1 * (~valid)
    return types.SimpleNamespace(
        rows=rows, uid=uid, traj_uid=traj, anchor_obs=obj(anchors), episode_rewards=obj(list(ep)),
        episode_reward=ep.astype(np.float64), is_action_valid=obj([np.bool_(v) for v in valid]), valid=valid,
        rewards=rewards, token_level_rewards=torch.from_numpy(tlr), response_mask=torch.from_numpy(mask),
        perm=rng.permutation(rows),
    )


def data_proto(w):
    import torch

    return types.SimpleNamespace(
        batch={"input_ids": torch.zeros(w.rows, 1, dtype=torch.int64), "responses": w.response_mask},
        non_tensor_batch={"uid": w.uid, "traj_uid": w.traj_uid, "anchor_obs": w.anchor_obs,
                          "episode_rewards": w.episode_rewards, "rewards": w.rewards,
                          "active_masks": np.ones(w.rows, dtype=bool), "is_action_valid": w.is_action_valid},
    )


CPU: dict[str, float] = {}


def median_ms(fn, repeats: int, name: str | None = None) -> float:
    """Median wall-clock ms of `repeats` calls after one warm-up; the median
    process CPU time (all threads) goes to CPU[name]. On a machine shared with
    other jobs the wall time stretches with the load while the CPU time stays
    close to what the call costs (it bounds the idle wall time from above:
    with two threads busy, CPU time is up to twice the wall time)."""
    fn()  # warm-up (thread pools, caches)
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    if name:
        CPU[name] = 1e3 * statistics.median(cpu)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=256)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--L", type=int, default=32, help="response length (token tensor width)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--ray", type=int, default=0, metavar="SHARDS", help="also time g2po_rs.ray with SHARDS tasks")
    ap.add_argument("--json", help="write the medians to this file")
    args = ap.parse_args()

    import torch

    import g2po_rs
    from g2po_rs import compat
    from g2po_rs.compat import core_g2po, core_gigpo

    compat.configure(print_group_size=False)
    torch.set_num_threads(int(os.environ.get("RAYON_NUM_THREADS", "2")))
    w = workload(args.tasks, args.n, args.steps, args.L)
    dp = data_proto(w)
    p = w.perm
    results: dict[str, float] = {}

    # The trainer permutes its rows between the phases (its own indexing, not
    # timed): phase two gets the permuted token tensors and arrays.
    tlr, mask = w.token_level_rewards[p], w.response_mask[p]
    uid, traj, anchors, valid_obj = w.uid[p], w.traj_uid[p], w.anchor_obs[p], w.is_action_valid[p]
    invalid = torch.from_numpy((~w.valid).astype(np.float32))

    def g2po_end_to_end():
        values, group_idx, next_idx = core_g2po.compute_group_aggregation_values(dp)
        return core_g2po.compute_g2po_outcome_advantage(
            tlr, values[p], mask, uid, traj, group_idx[p], next_idx[p], valid_obj, mode="mean_std_norm")

    def gigpo_end_to_end():
        returns = core_gigpo.compute_step_discounted_returns(dp, 0.95)
        returns -= 0.1 * invalid
        return core_gigpo.compute_gigpo_outcome_advantage(
            tlr, returns[p], mask, anchors, uid, traj, mode="mean_std_norm")

    keys = g2po_rs.keys(w.anchor_obs).view(np.int64)
    cfg = {k: g2po_rs.Config(k) for k in ("g2po", "gigpo")}

    def native(kind):
        return lambda: g2po_rs.estimate(cfg[kind], group=w.uid, traj=w.traj_uid, keys=keys,
                                        episode_reward=w.episode_reward, valid=w.valid)

    results["compat_g2po_ms"] = median_ms(g2po_end_to_end, args.repeats, "compat_g2po_ms")
    results["compat_gigpo_ms"] = median_ms(gigpo_end_to_end, args.repeats, "compat_gigpo_ms")
    results["native_g2po_int64_keys_ms"] = median_ms(native("g2po"), args.repeats, "native_g2po_int64_keys_ms")
    results["native_gigpo_int64_keys_ms"] = median_ms(native("gigpo"), args.repeats, "native_gigpo_int64_keys_ms")
    results["native_g2po_text_ms"] = median_ms(
        lambda: g2po_rs.estimate(cfg["g2po"], group=w.uid, traj=w.traj_uid, anchors=w.anchor_obs,
                                 episode_reward=w.episode_reward, valid=w.valid), args.repeats)
    batch = native("g2po")()._batch
    for kind in ("g2po", "gigpo"):
        times = []
        cpu = []
        for _ in range(max(args.repeats, 15)):
            start_cpu = time.process_time()
            times += batch.time_engine(kind, "mean_std_norm", 1)
            cpu.append(time.process_time() - start_cpu)
        results[f"engine_{kind}_ms"] = 1e3 * statistics.median(times)
        CPU[f"engine_{kind}_ms"] = 1e3 * statistics.median(cpu)
    results["broadcast_ms"] = median_ms(
        lambda: g2po_rs.broadcast(torch.zeros(w.rows), w.response_mask), args.repeats, "broadcast_ms")

    if args.ray:
        import ray

        from g2po_rs.ray import estimate_sharded

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
        results[f"ray_{args.ray}_shards_g2po_int64_keys_ms"] = median_ms(
            lambda: estimate_sharded(cfg["g2po"], num_shards=args.ray, group=w.uid, traj=w.traj_uid, keys=keys,
                                     episode_reward=w.episode_reward, valid=w.valid), args.repeats,
            f"ray_{args.ray}_shards_g2po_int64_keys_ms")
        ray.shutdown()

    info = {"rows": w.rows, "L": args.L, "repeats": args.repeats, "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "RAYON_NUM_THREADS": os.environ.get("RAYON_NUM_THREADS"),
            "numpy": np.__version__, "torch": torch.__version__, "load_before": os.getloadavg()}
    print(f"{'median of ' + str(args.repeats):36s} {'wall':>9s}    {'CPU':>9s}")
    for name, ms in results.items():
        print(f"{name:36s} {ms:9.2f} ms {CPU.get(name, float('nan')):9.2f} ms")
    for kind in ("g2po", "gigpo"):
        for what, table in (("wall", results), ("CPU", CPU)):
            e = table[f"engine_{kind}_ms"]
            print(f"{what:4s} {kind}: native / engine {table[f'native_{kind}_int64_keys_ms'] / e:.2f}x, "
                  f"compat / engine {table[f'compat_{kind}_ms'] / e:.2f}x")
    info["load_after"] = os.getloadavg()
    print(json.dumps(info))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "median_wall_ms": results, "median_cpu_ms": CPU}, f, indent=2)


if __name__ == "__main__":
    main()
