"""Drop-in replacements of the reference trainers' estimator modules.

Swap one import line in the trainer (the trainer runs inside a Ray actor, so
monkeypatching from the launcher would not reach it)::

    # verl-agent, verl/trainer/ppo/ray_trainer.py
    from g2po_rs.compat import core_gigpo          # was: from gigpo import core_gigpo
    # the G2PO fork
    from g2po_rs.compat import core_g2po           # was: from g2po import core_g2po
    # both (GRPO, RLOO, pass@k, REINFORCE++-baseline; the rest re-exported from verl)
    from g2po_rs.compat import core_algos          # was: from verl.trainer.ppo import core_algos

The functions keep the references' names, signatures and return conventions
(``(scores, scores)``, one float32 [bs, L] tensor twice) and accept what the
trainers pass (torch tensors, numpy object arrays of uuid strings, numpy bools,
rows duplicated and reordered between the two phases).

Numerics
--------
Two readings, chosen with :func:`configure` or the environment variables
``G2PO_RS_NUMERICS`` / ``G2PO_RS_NUMPY_MAJOR`` (which reach a trainer's Ray
actors through ``runtime_env``):

``"g2po"`` (default)
    Every statistic in float64, each result rounded once to float32: the
    exact values, the same under NumPy 1 and 2. Where the reference gives NaN
    (G2PO under ``mean_std_norm`` on a uid group of one row: the std of one
    value) the edge-centric term is 0, so the row keeps its episode and
    node-centric parts instead of poisoning the batch.
``"reference"``
    The references' own reading, for bit-level comparisons: float32 where they
    compute in float32 (GiGPO's return recurrence and G2PO's visit values under
    NumPy 2; GiGPO's and GRPO's statistics; G2PO's edge-centric term), NaN
    where they give NaN. ``numpy_major`` (default: the installed NumPy's)
    selects which NumPy's promotion rules are reproduced. Phase-one outputs
    (returns, node values) are then bit-identical to the references'; phase
    two agrees to float32 rounding (torch sums float32 with a CPU-dependent
    vector cascade, which no fixed order reproduces bit for bit).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from .. import _native
from ..errors import ConfigError, InputError, InputTypeError

__all__ = ["configure", "settings", "Settings"]


@dataclasses.dataclass
class Settings:
    """The compat modules' options (see the module docstring)."""

    numerics: str = "g2po"
    numpy_major: int | None = None
    print_group_size: bool = True
    anchor_cache: bool = True

    @property
    def reference(self) -> bool:
        return self.numerics == "reference"

    @property
    def numpy2(self) -> bool:
        major = self.numpy_major if self.numpy_major is not None else int(np.__version__.split(".")[0])
        return major >= 2


def _from_env() -> Settings:
    s = Settings()
    if "G2PO_RS_NUMERICS" in os.environ:
        s.numerics = os.environ["G2PO_RS_NUMERICS"]
    if "G2PO_RS_NUMPY_MAJOR" in os.environ:
        s.numpy_major = int(os.environ["G2PO_RS_NUMPY_MAJOR"])
    if "G2PO_RS_ANCHOR_CACHE" in os.environ:
        s.anchor_cache = os.environ["G2PO_RS_ANCHOR_CACHE"] not in ("0", "false", "False")
    if "G2PO_RS_PRINT_GROUP_SIZE" in os.environ:
        s.print_group_size = os.environ["G2PO_RS_PRINT_GROUP_SIZE"] not in ("0", "false", "False")
    _check(s)
    return s


def _check(s: Settings) -> None:
    if s.numerics not in ("g2po", "reference"):
        raise ConfigError(f"numerics: expected 'g2po' or 'reference', got {s.numerics!r}", "numerics")
    if s.numpy_major not in (None, 1, 2):
        raise ConfigError(f"numpy_major: expected None, 1 or 2, got {s.numpy_major!r}", "numpy_major")


_SETTINGS = _from_env()

#: GiGPO's anchor keys from the last phase one (see ``Settings.anchor_cache``).
_ANCHORS: Any = None


def _remember_anchors(anchor_obs: Any) -> None:
    """Phase one: hash str anchors in rollout order for phase two."""
    global _ANCHORS
    _ANCHORS = None
    if not _SETTINGS.anchor_cache:
        return
    if isinstance(anchor_obs, np.ndarray) and anchor_obs.ndim == 1 and anchor_obs.dtype == object:
        try:
            _ANCHORS = _native.AnchorCache(np.ascontiguousarray(anchor_obs))
        except InputTypeError:
            pass  # non-text anchors: phase two takes the generic path


def settings() -> Settings:
    """The options in force (a copy)."""
    return dataclasses.replace(_SETTINGS)


def configure(**options: Any) -> Settings:
    """Sets options: ``numerics`` ("g2po" | "reference"), ``numpy_major`` (None | 1 | 2),
    ``print_group_size`` (GiGPO's "Avg size of step-level group" line),
    ``anchor_cache`` (GiGPO: hash the anchor texts in phase one, in rollout order, and
    find them by object identity in phase two; holds a reference to the last batch's
    anchors). Returns the previous settings, so a test can restore them."""
    global _SETTINGS, _ANCHORS
    if not options.get("anchor_cache", True):
        _ANCHORS = None
    previous = settings()
    new = dataclasses.replace(_SETTINGS, **options)
    _check(new)
    _SETTINGS = new
    return previous


# ------------------------------------------------------------------ helpers


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _numpy(x: Any, argument: str) -> np.ndarray:
    if _is_torch(x):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise InputTypeError(f"{argument}: cannot be read as an array ({e})", argument) from None


def _ids(x: Any, argument: str) -> tuple[np.ndarray, int, np.ndarray]:
    """Dense ids (uint32), count and first row of an id column."""
    arr = _numpy(x, argument)
    if arr.ndim != 1:
        raise InputTypeError(f"{argument}: expected one id per row, got shape {arr.shape}", argument)
    if arr.dtype.kind in "USfb":
        arr = arr.astype(object)
    return _native.factorize(np.ascontiguousarray(arr), argument)


def _floats(x: Any, argument: str, rows: int, dtype=np.float64) -> np.ndarray:
    arr = _numpy(x, argument)
    if arr.dtype == object:
        try:
            arr = arr.astype(dtype)
        except (TypeError, ValueError) as e:
            raise InputTypeError(f"{argument}: not numbers ({e})", argument) from None
    if arr.dtype.kind not in "fiub":
        raise InputTypeError(f"{argument}: expected numbers, got dtype {arr.dtype}", argument)
    arr = np.ascontiguousarray(arr, dtype=dtype).reshape(-1)
    if arr.shape[0] != rows:
        raise InputError(f"{argument}: has {arr.shape[0]} entries but the batch has {rows} rows", argument)
    bad = ~np.isfinite(arr)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"{argument}, row {row}: {arr[row]} is not finite", argument, row)
    return arr


def _bools(x: Any, argument: str, rows: int) -> np.ndarray:
    arr = _numpy(x, argument).reshape(-1)
    if arr.dtype.kind not in "biufO":
        raise InputTypeError(f"{argument}: expected booleans, got dtype {arr.dtype}", argument)
    if arr.shape[0] != rows:
        raise InputError(f"{argument}: has {arr.shape[0]} entries but the batch has {rows} rows", argument)
    return _native.truth(np.ascontiguousarray(arr), argument)


def _rows_of(x: Any, argument: str) -> int:
    shape = tuple(x.shape) if hasattr(x, "shape") else (len(x),)
    if len(shape) == 0:
        raise InputTypeError(f"{argument}: expected one entry per row, got a scalar", argument)
    return int(shape[0])


def _check_rows(rows: int, **columns: Any) -> None:
    for name, col in columns.items():
        n = _rows_of(col, name)
        if n != rows:
            raise InputError(f"{name}: has {n} rows but token_level_rewards has {rows}", name)


def _token_sums(token_level_rewards: Any) -> np.ndarray:
    return _native.row_sums(_numpy(token_level_rewards, "token_level_rewards"), "token_level_rewards")


def _tokens(row_values: np.ndarray, response_mask: Any, like: Any) -> Any:
    """``row_values[:, None] * response_mask`` as float32, torch if ``like`` is torch."""
    mask = _numpy(response_mask, "response_mask")
    out = _native.broadcast(np.ascontiguousarray(row_values, dtype=np.float32), mask)
    if _is_torch(like):
        import torch

        t = torch.from_numpy(out)
        return t if like.device.type == "cpu" else t.to(like.device)
    return out


def _check_mode(mode: str) -> bool:
    """True when the std is removed (mean_norm)."""
    if mode == "mean_std_norm":
        return False
    if mode == "mean_norm":
        return True
    raise ConfigError(f"Unknown mode: {mode}", "mode")


def _grouped_norm(
    scores: np.ndarray,
    groups: np.ndarray,
    num_groups: int,
    epsilon: float,
    remove_std: bool,
    *,
    single: str,
    stats_rows: np.ndarray | None = None,
) -> np.ndarray:
    """Per-group standardisation of row scores (float64; float32 values under
    reference numerics). ``single``: what a group of one member gets,
    ``"zero_mean"`` (mean 0, std 1: verl's episode/GRPO rule) or ``"self"``
    (its own value as the mean: GiGPO's step rule, giving 0). ``stats_rows``
    (row indices) restricts the statistics (verl's
    ``compute_mean_std_cross_steps=False``)."""
    mask = None
    if stats_rows is not None:
        mask = np.zeros(groups.shape[0], dtype=bool)
        mask[stats_rows] = True
    return _native.grouped_norm(groups, num_groups, np.ascontiguousarray(scores, dtype=np.float64), float(epsilon),
                                bool(remove_std), single, _SETTINGS.reference, mask)


def _anchor_ids(anchor_obs: Any, rows: int, flavour: str) -> np.ndarray:
    """uint64 state ids of anchors: XXH3 keys of str anchors (the engine's), or
    dense ids of other objects under the reference's equality (GiGPO:
    ``to_hashable``, so 1 == 1.0 == True and arrays compare by content;
    G2PO: the object itself as a dict key)."""
    if anchor_obs is None:
        raise InputTypeError(
            "anchor_obs: None (the environment manager gives no anchor observations)", "anchor_obs"
        )
    arr = anchor_obs if isinstance(anchor_obs, np.ndarray) else _numpy(anchor_obs, "anchor_obs")
    if arr.shape[0] != rows:
        raise InputError(f"anchor_obs: has {arr.shape[0]} rows but the batch has {rows}", "anchor_obs")
    if arr.ndim == 1 and arr.dtype == object:
        try:
            if _ANCHORS is not None and flavour == "gigpo":
                return _ANCHORS.keys(np.ascontiguousarray(arr))
            return _native.text_keys(np.ascontiguousarray(arr), [], "anchor_obs")
        except InputTypeError:
            pass  # not all str: the generic path below
    if arr.ndim == 1 and arr.dtype.kind in "US":
        return _native.text_keys(arr.astype(object), [], "anchor_obs")
    from .core_gigpo import to_hashable

    table: dict[Any, int] = {}
    out = np.empty(rows, dtype=np.uint64)
    for row in range(rows):
        obs = arr[row]
        try:
            key = to_hashable(obs) if flavour == "gigpo" else obs
            out[row] = table.setdefault(key, len(table))
        except TypeError as e:
            raise InputTypeError(f"anchor_obs, row {row}: {e}", "anchor_obs", row) from None
    return out
