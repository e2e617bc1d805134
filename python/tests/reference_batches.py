"""Trainer-shaped random batches (shared by the integration test, the
invariance tests and the benchmark)."""

from __future__ import annotations

import types
import uuid

import numpy as np


def obj(values) -> np.ndarray:
    a = np.empty(len(values), dtype=object)
    a[:] = list(values)
    return a


def rollout(rng: np.random.Generator, groups: int, n: int, max_steps: int, *, states: int = 6,
            p_invalid: float = 0.15, singleton_group: bool = False, success_reward: float = 10.0):
    """Rows trajectory-major, steps in order, as the rollout loop emits them.

    States are drawn from a small per-group pool so they repeat (and sometimes
    self-loop); episode rewards are 10 or 0, on the last step as the env reward.
    """
    uid, traj, obs, valid, ep, reward = [], [], [], [], [], []
    for g in range(groups):
        u = str(uuid.UUID(int=int(rng.integers(2**63)) * 2 + 1))
        pool = [f"group {g}: you are in room {k}. " + "x" * int(rng.integers(0, 20)) for k in range(states)]
        count = 1 if singleton_group and g == 0 else n
        for _ in range(count):
            t = str(uuid.UUID(int=int(rng.integers(2**63)) * 2))
            length = 1 if singleton_group and g == 0 else int(rng.integers(1, max_steps + 1))
            r = success_reward if rng.random() < 0.5 else 0.0
            for s in range(length):
                uid.append(u)
                traj.append(t)
                obs.append(pool[int(rng.integers(states))])
                valid.append(bool(rng.random() >= p_invalid))
                ep.append(np.float32(r))
                reward.append(r if s == length - 1 else 0.0)
    # One str object per id, repeated (as Ray's pickling keeps identity).
    intern: dict = {}
    uid = obj([intern.setdefault(x, x) for x in uid])
    traj = obj([intern.setdefault(x, x) for x in traj])
    return types.SimpleNamespace(
        uid=uid, traj_uid=traj, anchor_obs=obj(obs), is_action_valid=obj([np.bool_(v) for v in valid]),
        valid=np.array(valid), episode_rewards=obj(ep), rewards=np.array(reward, dtype=np.float32),
    )


def tokens(batch, rng: np.random.Generator, L: int, penalty: float, *, strided: bool = False):
    """token_level_rewards (episode reward minus the penalty on the last valid
    token) and the int64 response mask, as the trainer builds them."""
    import torch

    bs = len(batch.uid)
    lens = rng.integers(1, L + 1, size=bs)
    width = 2 * L if strided else L
    mask = torch.zeros(bs, width, dtype=torch.int64)
    tlr = torch.zeros(bs, L, dtype=torch.float32)
    for i, n in enumerate(lens):
        mask[i, :n] = 1
        tlr[i, n - 1] = float(batch.episode_rewards[i]) - penalty * (not batch.valid[i])
    if strided:
        mask = mask[:, ::2]  # a non-contiguous view, as without batch balancing
        for i, n in enumerate(lens):
            mask[i, :] = 0
            mask[i, : (n + 1) // 2] = 1
            tlr[i] = 0
            tlr[i, (n + 1) // 2 - 1] = float(batch.episode_rewards[i]) - penalty * (not batch.valid[i])
    return tlr, mask


def data_proto(batch, L: int):
    import torch

    bs = len(batch.uid)
    return types.SimpleNamespace(
        batch={"input_ids": torch.zeros(bs, 2, dtype=torch.int64), "responses": torch.zeros(bs, L, dtype=torch.int64)},
        non_tensor_batch={
            "rewards": batch.rewards, "traj_uid": batch.traj_uid, "uid": batch.uid,
            "active_masks": np.ones(bs, dtype=bool), "anchor_obs": batch.anchor_obs,
            "episode_rewards": batch.episode_rewards, "is_action_valid": batch.is_action_valid,
        },
    )


def adjust_and_balance(rng: np.random.Generator, bs: int, extra: int) -> np.ndarray:
    """Row order after verl-agent's adjust_batch (random duplicates appended)
    and _balance_batch (a permutation)."""
    order = np.concatenate([np.arange(bs), rng.integers(0, bs, size=extra)])
    return rng.permutation(order)
