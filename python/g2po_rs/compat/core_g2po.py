"""Drop-in for the G2PO fork's ``g2po.core_g2po`` (G2PO, arXiv 2606.22995).

Same names, signatures and returns; the work is done by g2po_rs (see
:mod:`g2po_rs.compat` for the numerics). ``from g2po_rs.compat import core_g2po``.

Phase one, :func:`compute_group_aggregation_values`, runs on the rollout in step
order: the engine fuses identical anchors of a uid into nodes. Phase two,
:func:`compute_g2po_outcome_advantage`, runs after the trainer duplicated and
reordered the rows, from the node ids and values phase one returned.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _native
from ..errors import InputError, InputTypeError
from . import _anchor_ids, _bools, _check_mode, _check_rows, _floats, _ids, _tokens
from . import settings as _settings
from .core_gigpo import _episode_rows
from .core_gigpo import episode_norm_reward as episode_norm_reward

__all__ = [
    "SUCCESS_REWARD",
    "episode_norm_reward",
    "compute_group_aggregation_values",
    "compute_step_level_advantage",
    "compute_g2po_outcome_advantage",
    "GAMMA",
]

#: The episode reward that marks a success (exact equality decides the terminal).
SUCCESS_REWARD = 10.0

#: The discount the reference hard-codes for visit values.
GAMMA = 0.95


def compute_group_aggregation_values(batch: Any, *, gamma: float = GAMMA, success_reward: float = SUCCESS_REWARD):
    """Node ids and node values of every row (rows in step order).

    Within each uid, rows with identical anchor observations form one node;
    a visit at step t of a trajectory of T steps contributes
    ``gamma**(T - t) * R`` (R the trajectory's episode reward) and a node's value
    is the mean over its visits. Returns ``(values, group_idx, next_group_idx)``:
    float64 values, int64 node ids numbered per uid from 0 in sorted-trajectory
    order, and the node of the next step (-1: success terminal, episode reward
    == ``success_reward``; -2: failure).

    ``gamma`` and ``success_reward`` are keyword-only extras (the reference
    hard-codes 0.95 and 10.0).
    """
    ntb = batch.non_tensor_batch
    index = np.asarray(ntb["uid"])
    traj = np.asarray(ntb["traj_uid"])
    if traj.dtype != object:
        traj = traj.astype(object)
    if index.dtype.kind in "US":
        index = index.astype(object)
    bs = int(batch.batch["responses"].shape[0])
    _check_rows(bs, uid=index, traj_uid=traj, episode_rewards=ntb["episode_rewards"])
    rewards = _floats(ntb["episode_rewards"], "episode_rewards", bs, dtype=np.float32).astype(np.float64)
    anchors = ntb["anchor_obs"]
    s = _settings()
    float32_terms = s.reference and s.numpy2
    text = isinstance(anchors, np.ndarray) and anchors.ndim == 1 and anchors.dtype == object
    args = dict(
        uid=np.ascontiguousarray(index),
        traj=np.ascontiguousarray(traj),
        episode_reward=rewards,
        canonicalizers=[],
        gamma=float(gamma),
        success_reward=float(success_reward),
        float32_terms=float32_terms,
    )
    if text:
        try:
            return _native.g2po_phase_one(anchors=np.ascontiguousarray(anchors), keys=None, **args)
        except Exception as e:
            if getattr(e, "argument", None) != "anchor_obs" or e.row is None:
                raise
    keys = _anchor_ids(anchors, bs, "g2po")
    return _native.g2po_phase_one(anchors=None, keys=keys, **args)


def _step_rows(step_rewards, is_action_valid, uid, n_uid, group_idx, next_group_idx, epsilon, mode, penalty):
    bs = uid.shape[0]
    return _native.g2po_step(
        uid, n_uid,
        _int64s(group_idx, "group_idx", bs), _int64s(next_group_idx, "next_group_idx", bs),
        _floats(step_rewards, "step_rewards", bs), _bools(is_action_valid, "is_action_valid", bs),
        float(epsilon), mode == "mean_std_norm", float(penalty), SUCCESS_REWARD, 0.0, _settings().reference,
    )


def _int64s(x, argument: str, rows: int) -> np.ndarray:
    arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x).reshape(-1)
    if arr.dtype == object or arr.dtype.kind == "f":
        as_int = arr.astype(np.int64)
        if not np.array_equal(as_int, arr.astype(np.float64)):
            row = int(np.flatnonzero(as_int != arr.astype(np.float64))[0])
            raise InputError(f"{argument}, row {row}: {arr[row]!r} is not an integer node id", argument, row)
        arr = as_int
    if arr.dtype.kind not in "iu":
        raise InputTypeError(f"{argument}: expected integer node ids, got dtype {arr.dtype}", argument)
    if arr.shape[0] != rows:
        raise InputError(f"{argument}: has {arr.shape[0]} entries but the batch has {rows} rows", argument)
    return np.ascontiguousarray(arr, dtype=np.int64)


def compute_step_level_advantage(
    step_rewards,
    response_mask,
    is_action_valid,
    index,
    group_idx,
    next_group_idx,
    epsilon: float = 1e-6,
    mode: str = "mean_std_norm",
    invalid_action_penalty: float = 0.1,
):
    """G2PO's step part (node-centric + edge-centric) per token, [bs, L]."""
    uid, n_uid, _ = _ids(index, "index")
    bs = uid.shape[0]
    _check_rows(bs, response_mask=response_mask)
    rows = _step_rows(step_rewards, is_action_valid, uid, n_uid, group_idx, next_group_idx, epsilon, mode,
                      invalid_action_penalty)
    return _tokens(rows, response_mask, response_mask)


def compute_g2po_outcome_advantage(
    token_level_rewards,
    step_rewards,
    response_mask,
    index,
    traj_index,
    group_idx,
    next_group_idx,
    is_action_valid,
    epsilon: float = 1e-6,
    step_advantage_w: float = 1.0,
    mode: str = "mean_norm",
):
    """G2PO advantages: episode part + w * (node-centric + edge-centric), as
    ``(scores, scores)``, one float32 [bs, L] tensor twice.

    Rows may be duplicated and reordered after phase one (every duplicate is a
    member of its groups, as in the reference). The invalid-action penalty of
    the node-centric term is 0.1, as in the reference.
    """
    remove_std = _check_mode(mode)
    bs = int(token_level_rewards.shape[0])
    _check_rows(bs, step_rewards=step_rewards, response_mask=response_mask, index=index, group_idx=group_idx,
                next_group_idx=next_group_idx, is_action_valid=is_action_valid)
    episode, uid = _episode_rows(token_level_rewards, index, traj_index, epsilon, remove_std)
    n_uid = int(uid.max()) + 1
    step = _step_rows(step_rewards, is_action_valid, uid, n_uid, group_idx, next_group_idx, epsilon, mode, 0.1)
    if _settings().reference:
        scores = episode.astype(np.float32) + np.float32(step_advantage_w) * step.astype(np.float32)
    else:
        scores = (episode + step_advantage_w * step).astype(np.float32)
    tokens = _tokens(scores, response_mask, token_level_rewards)
    return tokens, tokens

