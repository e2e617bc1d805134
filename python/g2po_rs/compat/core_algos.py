"""Drop-in for verl's ``verl.trainer.ppo.core_algos``.

The grouped outcome estimators (GRPO, Dr.GRPO, RLOO, GRPO pass@k and
REINFORCE++-baseline) are served by g2po_rs with verl's names, signatures and
returns. Everything else (GAE, the policy and value losses, KL controllers,
...) is verl's own, re-exported when verl is installed, so
``from g2po_rs.compat import core_algos`` can replace
``from verl.trainer.ppo import core_algos`` in a trainer.
"""

from __future__ import annotations

import numpy as np

from .. import _native
from ..errors import InputError
from . import _check_rows, _grouped_norm, _ids, _token_sums, _tokens
from . import settings as _settings

try:  # verl present: re-export all of it, then override the grouped estimators.
    from verl.trainer.ppo import core_algos as _verl_core_algos
    from verl.trainer.ppo.core_algos import *  # noqa: F401,F403

    def __getattr__(name):  # private helpers and anything `import *` skipped
        return getattr(_verl_core_algos, name)

    VERL_AVAILABLE = True
except ImportError:  # pragma: no cover - depends on the environment
    _verl_core_algos = None
    VERL_AVAILABLE = False

__all__ = [
    "compute_grpo_outcome_advantage",
    "compute_grpo_passk_outcome_advantage",
    "compute_rloo_outcome_advantage",
    "compute_reinforce_plus_plus_baseline_outcome_advantage",
    "VERL_AVAILABLE",
]


def _scores_and_groups(token_level_rewards, response_mask, index, traj_index, cross_steps):
    """Row scores (token sums), dense uid ids, and the rows the statistics use."""
    bs = int(token_level_rewards.shape[0])
    _check_rows(bs, response_mask=response_mask, index=index)
    scores = _token_sums(token_level_rewards)
    if _settings().reference:
        scores = scores.astype(np.float32).astype(np.float64)
    uid, n, _ = _ids(index, "index")
    stats_rows = None
    if not cross_steps:
        traj, _, _ = _ids(traj_index, "traj_index")
        pairs, _ = _native.pair_ids(uid, traj.astype(np.uint64))
        _, first = np.unique(pairs, return_index=True)
        stats_rows = np.sort(first)
    return scores, uid, n, stats_rows


def _stats(scores, uid, n, stats_rows):
    if stats_rows is None:
        return _native.group_stats(uid, n, scores, _settings().reference)
    return _native.group_stats(uid[stats_rows], n, scores[stats_rows], _settings().reference)


def compute_grpo_outcome_advantage(
    token_level_rewards,
    response_mask,
    index,
    traj_index,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    compute_mean_std_cross_steps: bool = True,
):
    """GRPO (or, without the std, Dr.GRPO): each row's score standardised among
    the rows of its uid (a uid of one row: mean 0, std 1). ``(scores, scores)``."""
    scores, uid, n, rows = _scores_and_groups(
        token_level_rewards, response_mask, index, traj_index, compute_mean_std_cross_steps
    )
    adv = _grouped_norm(scores, uid, n, epsilon, not norm_adv_by_std_in_grpo, single="zero_mean", stats_rows=rows)
    out = _tokens(adv, response_mask, token_level_rewards)
    return out, out


def compute_rloo_outcome_advantage(
    token_level_rewards,
    response_mask,
    index,
    traj_index,
    epsilon: float = 1e-6,
    compute_mean_std_cross_steps: bool = True,
):
    """RLOO: s * n/(n-1) - mean * n/(n-1) (s minus the mean of the others); a uid
    of one row keeps s. ``(scores, scores)``."""
    scores, uid, n, rows = _scores_and_groups(
        token_level_rewards, response_mask, index, traj_index, compute_mean_std_cross_steps
    )
    count, mean, _ = _stats(scores, uid, n, rows)
    c, m = count[uid].astype(np.float64), mean[uid]
    with np.errstate(invalid="ignore", divide="ignore"):
        adv = np.where(c > 1, scores * c / (c - 1) - m * c / (c - 1), scores)
    out = _tokens(adv, response_mask, token_level_rewards)
    return out, out


def compute_grpo_passk_outcome_advantage(
    token_level_rewards,
    response_mask,
    index,
    traj_index,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    compute_mean_std_cross_steps: bool = True,
):
    """GRPO pass@k: only the best row of each uid gets r_max - r_second_max
    (divided by std + epsilon when normalising); ties go to the first row in
    row order. A uid needs at least 2 rows (ValueError otherwise, as in verl).
    ``(advantages, advantages)``."""
    scores, uid, n, rows = _scores_and_groups(
        token_level_rewards, response_mask, index, traj_index, compute_mean_std_cross_steps
    )
    members = np.arange(scores.shape[0]) if rows is None else rows
    count, _, std = _stats(scores, uid, n, rows)
    if (count < 2).any():
        g = int(np.flatnonzero(count < 2)[0])
        row = int(members[np.flatnonzero(uid[members] == g)[0]])
        raise InputError(
            f"index, row {row}: Pass@k requires at least 2 samples per group; this row's group has {int(count[g])}",
            "index",
            row,
        )
    # Best and second best per uid among the member rows (stable: first wins ties).
    order = np.lexsort((members, -scores[members], uid[members]))
    ranked = members[order]
    starts = np.flatnonzero(np.r_[True, uid[ranked][1:] != uid[ranked][:-1]])
    best, second = ranked[starts], ranked[starts + 1]
    gain = scores[best] - scores[second]
    if norm_adv_by_std_in_grpo:
        gain = gain / (std[uid[best]] + epsilon)
    adv = np.zeros(scores.shape[0], dtype=np.float64)
    adv[best] = gain
    out = _tokens(adv, response_mask, token_level_rewards)
    return out, out


def compute_reinforce_plus_plus_baseline_outcome_advantage(
    token_level_rewards,
    response_mask,
    index,
    traj_index,
    epsilon: float = 1e-6,
    compute_mean_std_cross_steps: bool = True,
):
    """REINFORCE++-baseline: s - mean of its uid (mean 0 for a uid of one row),
    broadcast to the response tokens, then whitened over all response tokens of
    the batch (mean and unbiased variance over the masked tokens, 1e-8 added to
    the variance). Assumes a 0/1 mask. ``(scores, scores)``."""
    scores, uid, n, rows = _scores_and_groups(
        token_level_rewards, response_mask, index, traj_index, compute_mean_std_cross_steps
    )
    count, mean, _ = _stats(scores, uid, n, rows)
    centred = scores - np.where(count[uid] == 1, 0.0, mean[uid])
    lens = _token_sums(response_mask)
    tokens = lens.sum()
    if tokens == 0:
        raise InputError("response_mask: At least one element in the mask has to be 1.", "response_mask")
    if tokens == 1:
        raise InputError(
            "response_mask: The sum of the mask is one, which can cause a division by zero.", "response_mask"
        )
    mu = (centred * lens).sum() / tokens
    var = (((centred - mu) ** 2) * lens).sum() / tokens * tokens / (tokens - 1)
    whitened = (centred - mu) / np.sqrt(var + 1e-8)
    out = _tokens(whitened, response_mask, token_level_rewards)
    return out, out
