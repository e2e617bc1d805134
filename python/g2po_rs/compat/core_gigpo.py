"""Drop-in for verl-agent's ``gigpo.core_gigpo`` (GiGPO, arXiv 2505.10978).

Same names, signatures and returns; the work is done by g2po_rs (see
:mod:`g2po_rs.compat` for the numerics). ``from g2po_rs.compat import core_gigpo``.
"""

from __future__ import annotations

import uuid
from collections import Counter
from difflib import SequenceMatcher
from typing import Any

import numpy as np

from .. import _native
from ..errors import ConfigError, InputError, InputTypeError
from . import _anchor_ids, _check_mode, _check_rows, _floats, _grouped_norm, _ids, _remember_anchors, _token_sums, _tokens
from . import settings as _settings

__all__ = [
    "to_hashable",
    "summarize_group_size",
    "are_similar",
    "compute_step_discounted_returns",
    "compute_gigpo_outcome_advantage",
    "episode_norm_reward",
    "build_step_group",
    "step_norm_reward",
]


def to_hashable(x: Any) -> Any:
    """A hashable stand-in for an anchor, with the reference's equality: numbers,
    str and bool as they are (so 1 == 1.0 == True), numpy scalars as Python
    values, arrays as the tuple of their flattened elements, lists/tuples and
    dicts recursively. Anything else (``None`` included) raises ``TypeError``."""
    if isinstance(x, (int, float, str, bool)):
        return x
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, np.ndarray):
        return tuple(x.flatten())
    if isinstance(x, (list, tuple)):
        return tuple(to_hashable(e) for e in x)
    if isinstance(x, dict):
        return tuple(sorted((k, to_hashable(v)) for k, v in x.items()))
    raise TypeError(f"Unsupported type: {type(x)}")


def summarize_group_size(group_size: list) -> None:
    """Prints the distribution of step-group sizes (as the reference does)."""
    counts = Counter(group_size)
    total = sum(counts.values())
    print("Summary of step-level group sizes:")
    print("Size | Count | Proportion")
    print("-------------------------")
    for size in range(1, max(counts) + 1):
        cnt = counts.get(size, 0)
        prop = cnt / total if total > 0 else 0
        if prop:
            print(f"{size:>4} | {cnt:>5} | {prop:>9.2%}")


def are_similar(a: str, b: str, threshold: float = 0.95) -> bool:
    """Whether difflib's ratio of two texts reaches ``threshold``."""
    if not isinstance(a, str) or not isinstance(b, str):
        raise ValueError("Only text-based observations are supported for similarity-based GiGPO in this version.")
    return SequenceMatcher(None, a, b).ratio() >= threshold


def compute_step_discounted_returns(batch: Any, gamma: float) -> Any:
    """Discounted returns G_t = r_t + gamma * G_{t+1} per trajectory (rows of a
    trajectory in step order), as a float32 tensor on ``input_ids``' device.

    Reads ``batch.non_tensor_batch['rewards']``, ``['traj_uid']`` and
    ``['active_masks']`` (every row must be active, as the reference asserts).
    With the anchor cache on (the default), also hashes
    ``['anchor_obs']`` for phase two (see :func:`g2po_rs.compat.configure`).
    """
    import torch

    ntb = batch.non_tensor_batch
    traj_dense, _, _ = _ids(ntb["traj_uid"], "traj_uid")
    rows = traj_dense.shape[0]
    rewards = _floats(ntb["rewards"], "rewards", rows, dtype=np.float32)
    active = np.asarray(ntb["active_masks"]).astype(np.float32).reshape(-1)
    if active.shape[0] != rows:
        raise InputError(f"active_masks: has {active.shape[0]} rows but the batch has {rows}", "active_masks")
    inactive = np.flatnonzero(active == 0)
    if inactive.size:
        row = int(inactive[0])
        raise InputError(
            f"active_masks, row {row}: inactive row; active_masks should be all 1s for the same trajectory",
            "active_masks",
            row,
        )
    _remember_anchors(ntb.get("anchor_obs"))
    s = _settings()
    returns = _native.discounted_returns(traj_dense, rewards.astype(np.float64), float(gamma), s.reference and s.numpy2)
    device = batch.batch["input_ids"].device
    out = torch.from_numpy(returns)
    return out if device.type == "cpu" else out.to(device)


def _episode_rows(token_level_rewards, index, traj_index, epsilon, remove_std, cross_steps=True):
    scores = _token_sums(token_level_rewards)
    uid, n_uid, _ = _ids(index, "index")
    if uid.shape[0] != scores.shape[0]:
        raise InputError(f"index: has {uid.shape[0]} rows but token_level_rewards has {scores.shape[0]}", "index")
    stats_rows = None
    if not cross_steps:
        traj, _, _ = _ids(traj_index, "traj_index")
        pairs, _ = _native.pair_ids(uid, traj.astype(np.uint64))
        _, first = np.unique(pairs, return_index=True)
        stats_rows = np.sort(first)
    if _settings().reference:
        scores = scores.astype(np.float32).astype(np.float64)
    return _grouped_norm(scores, uid, n_uid, epsilon, remove_std, single="zero_mean", stats_rows=stats_rows), uid


def episode_norm_reward(
    token_level_rewards,
    response_mask,
    index,
    traj_index,
    epsilon: float = 1e-6,
    remove_std: bool = True,
    compute_mean_std_cross_steps: bool = True,
):
    """Episode-level advantage, [bs, L]: each row's score (its token-reward sum)
    standardised among the rows of its uid (a uid of one row: mean 0, std 1)."""
    _check_rows(_rows_of_tensor(token_level_rewards), response_mask=response_mask, index=index)
    rows, _ = _episode_rows(token_level_rewards, index, traj_index, epsilon, remove_std, compute_mean_std_cross_steps)
    return _tokens(rows, response_mask, token_level_rewards)


def _rows_of_tensor(x) -> int:
    return int(x.shape[0])


def _step_group_ids(anchor_obs, uid, enable_similarity, similarity_thresh):
    rows = uid.shape[0]
    if enable_similarity:
        if not (0.0 < similarity_thresh < 1.0):
            raise ConfigError(
                "similarity_thresh: When enabling similarity-based step-level group, similarity_thresh should be in (0, 1)",
                "similarity_thresh",
            )
        arr = np.asarray(anchor_obs, dtype=object).reshape(-1)
        if arr.shape[0] != rows:
            raise InputError(f"anchor_obs: has {arr.shape[0]} rows but the batch has {rows}", "anchor_obs")
        try:
            return _native.similarity_groups(uid, np.ascontiguousarray(arr), float(similarity_thresh))
        except InputTypeError as e:
            raise InputTypeError(
                f"{e} (Only text-based observations are supported for similarity-based GiGPO)", e.argument, e.row
            ) from None
    keys = _anchor_ids(anchor_obs, rows, "gigpo")
    return _native.pair_ids(uid, keys)


def build_step_group(anchor_obs, index, enable_similarity: bool = False, similarity_thresh: float = 0.95, summarize: bool = False):
    """Step groups: within each uid, rows with identical anchors (or, with
    similarity, difflib-similar ones). Returns an object array with one uuid4
    string per group, as the reference does."""
    uid, _, _ = _ids(index, "index")
    groups, n = _step_group_ids(anchor_obs, uid, enable_similarity, similarity_thresh)
    sizes = np.bincount(groups, minlength=n)
    _report_sizes(sizes, summarize)
    names = np.array([str(uuid.uuid4()) for _ in range(n)], dtype=object)
    return names[groups]


def _report_sizes(sizes: np.ndarray, summarize: bool) -> None:
    if summarize:
        summarize_group_size(sizes.tolist())
    if _settings().print_group_size:
        print(f"Avg size of step-level group: {np.mean(sizes)}")


def _step_rows(step_rewards, groups, n, epsilon, remove_std):
    values = _floats(step_rewards, "step_rewards", groups.shape[0])
    if _settings().reference:
        values = values.astype(np.float32).astype(np.float64)
    return _grouped_norm(values, groups, n, epsilon, remove_std, single="self")


def step_norm_reward(step_rewards, response_mask, index, epsilon: float = 1e-6, remove_std: bool = True):
    """Step-level advantage, [bs, L]: each row's step reward standardised within
    its step group (``index``: the step-group ids); a group of one gets 0."""
    groups, n, _ = _ids(index, "index")
    rows = _step_rows(step_rewards, groups, n, epsilon, remove_std)
    return _tokens(rows, response_mask, response_mask)


def compute_gigpo_outcome_advantage(
    token_level_rewards,
    step_rewards,
    response_mask,
    anchor_obs,
    index,
    traj_index,
    epsilon: float = 1e-6,
    step_advantage_w: float = 1.0,
    mode: str = "mean_norm",
    enable_similarity: bool = False,
    similarity_thresh: float = 0.95,
):
    """GiGPO advantages: episode part + w * step part, as ``(scores, scores)``,
    one float32 [bs, L] tensor twice.

    Rows may be duplicated and reordered (every duplicate is a member of its
    groups, as in the reference); ``step_rewards`` are the discounted returns
    of :func:`compute_step_discounted_returns`, penalised by the trainer.
    """
    remove_std = _check_mode(mode)
    bs = _rows_of_tensor(token_level_rewards)
    _check_rows(bs, step_rewards=step_rewards, response_mask=response_mask, index=index)
    episode, uid = _episode_rows(token_level_rewards, index, traj_index, epsilon, remove_std)
    groups, n = _step_group_ids(anchor_obs, uid, enable_similarity, similarity_thresh)
    _report_sizes(np.bincount(groups, minlength=n), False)
    step = _step_rows(step_rewards, groups, n, epsilon, remove_std)
    if _settings().reference:
        scores = episode + np.float32(step_advantage_w) * step
    else:
        scores = (episode + step_advantage_w * step).astype(np.float32)
    tokens = _tokens(scores, response_mask, token_level_rewards)
    return tokens, tokens

