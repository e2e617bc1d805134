"""g2po_rs: GRPO, GiGPO and G2PO advantages from the g2po Rust engine.

The native API works on numpy arrays, one entry per agent step (row)::

    import numpy as np, g2po_rs
    cfg = g2po_rs.Config("g2po", mode="mean_std_norm")
    est = g2po_rs.estimate(cfg, group=uid, traj=traj_uid, anchors=anchor_obs,
                           episode_reward=episode_rewards, valid=is_action_valid)
    est.advantage          # float32 [rows]
    est.node, est.next_node, est.node_value, est.node_centric, est.edge_centric, ...
    tokens = g2po_rs.broadcast(est.advantage, response_mask)   # numpy or torch

Drop-in replacements of the reference trainers' estimator modules live in
:mod:`g2po_rs.compat` (``core_gigpo``, ``core_g2po``, ``core_algos``); sharding
over Ray tasks in :mod:`g2po_rs.ray`.

The package is named ``g2po_rs`` on purpose: a package importable as ``g2po``
would shadow the G2PO fork's own ``g2po`` namespace package.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

import numpy as np

from . import _native
from .errors import ConfigError, G2poError, InputError, InputTypeError, InternalError

__all__ = [
    "Config",
    "Estimate",
    "Graph",
    "estimate",
    "keys",
    "canonical",
    "broadcast",
    "threads_used",
    "CANONICALIZERS",
    "G2poError",
    "InputError",
    "InputTypeError",
    "ConfigError",
    "InternalError",
]

__version__ = "0.1.0"

#: Names accepted in ``Config.canonicalizers`` / ``keys(..., canonicalizers)``.
CANONICALIZERS = ("strip_turn_prefix", "strip_move_counter", "collapse_whitespace", "text_env")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every option of the three estimators (the engine's ``EstimatorConfig``).

    Args:
        estimator: ``"grpo"``, ``"gigpo"``, ``"g2po"``, ``"g2po_tree"`` (history-tree nodes),
            ``"g2po_bellman"`` (Bellman-backup node values), ``"rloo"``,
            ``"reinforce_plus_plus_baseline"`` or ``"grpo_passk"`` (the engine's ``EstimatorKind``).
        mode: ``"mean_std_norm"`` ((x - mean) / (std + epsilon)) or ``"mean_norm"`` (x - mean).
        gamma: discount (GiGPO returns, G2PO visit values).
        epsilon: added to the std before dividing.
        step_weight: weight w of the step part (GiGPO) or of node + edge terms (G2PO).
        invalid_penalty: subtracted for an invalid action.
        stats_over: episode statistics over ``"rows"`` (the peers' code) or ``"trajectories"``.
        similarity: ``None`` (identical states) or a threshold in [0, 1] for GiGPO's difflib grouping.
        terminal: G2PO terminal values: ``"episode_reward"`` (the reference reading) or
            ``(success, failure)``.
        canonicalizers: text rewrites before hashing anchors (see :data:`CANONICALIZERS`).
    """

    estimator: str = "g2po"
    mode: str = "mean_std_norm"
    gamma: float = 0.95
    epsilon: float = 1e-6
    step_weight: float = 1.0
    invalid_penalty: float = 0.1
    stats_over: str = "rows"
    similarity: float | None = None
    terminal: str | tuple[float, float] = "episode_reward"
    canonicalizers: tuple[str, ...] = ()

    def _native_kwargs(self) -> dict[str, Any]:
        if isinstance(self.terminal, str):
            if self.terminal != "episode_reward":
                raise ConfigError(
                    f"terminal: expected 'episode_reward' or (success, failure), got {self.terminal!r}", "terminal"
                )
            terminal = None
        else:
            try:
                success, failure = self.terminal
                terminal = (float(success), float(failure))
            except (TypeError, ValueError):
                raise ConfigError(
                    f"terminal: expected 'episode_reward' or (success, failure), got {self.terminal!r}", "terminal"
                ) from None
        if isinstance(self.canonicalizers, str):
            raise ConfigError("canonicalizers: expected a sequence of names, got a str", "canonicalizers")
        return dict(
            estimator=str(self.estimator),
            mode=str(self.mode),
            gamma=float(self.gamma),
            epsilon=float(self.epsilon),
            step_weight=float(self.step_weight),
            invalid_penalty=float(self.invalid_penalty),
            stats_over=str(self.stats_over),
            similarity=None if self.similarity is None else float(self.similarity),
            terminal=terminal,
            canonicalizers=list(self.canonicalizers),
        )


def _as_array(x: Any, argument: str, *, ids: bool = False) -> Any:
    """numpy view of a torch tensor, array of a list; numpy arrays pass as they are
    (layout and dtype are checked natively, never silently copied)."""
    if x is None:
        return None
    if isinstance(x, np.ndarray):
        if ids and x.dtype.kind in "US":
            return x.astype(object)
        return x
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    if isinstance(x, (list, tuple)):
        if ids:
            arr = np.empty(len(x), dtype=object)
            arr[:] = list(x)
            return arr
        return np.asarray(x)
    raise InputTypeError(f"{argument}: expected a numpy array, torch tensor or list, got {type(x).__name__}", argument)


@dataclasses.dataclass
class Estimate:
    """Per-row output of :func:`estimate`, in the caller's row order.

    Columns an estimator does not produce are ``None``: GRPO fills ``advantage``
    and ``episode``; GiGPO adds ``step``, ``step_return`` and ``node`` (its step
    group, numbered in first-seen row order across the batch); G2PO adds
    ``step`` (node-centric + edge-centric), ``node_centric``, ``edge_centric``,
    ``node`` (numbered per group in first-seen row order), ``next_node`` (-1
    success terminal, -2 failure terminal), ``node_value`` and ``next_value``
    (the value of where the step leads).
    """

    advantage: np.ndarray
    episode: np.ndarray
    step: np.ndarray | None
    node_centric: np.ndarray | None
    edge_centric: np.ndarray | None
    step_return: np.ndarray | None
    node: np.ndarray | None
    next_node: np.ndarray | None
    node_value: np.ndarray | None
    next_value: np.ndarray | None = None
    _batch: Any = dataclasses.field(repr=False, default=None)
    _group: Any = dataclasses.field(repr=False, default=None)
    _anchors: Any = dataclasses.field(repr=False, default=None)
    _group_index: Any = dataclasses.field(repr=False, default=None)

    COLUMNS = (
        "advantage",
        "episode",
        "step",
        "node_centric",
        "edge_centric",
        "step_return",
        "node",
        "next_node",
        "node_value",
        "next_value",
    )

    def to_dict(self) -> dict[str, np.ndarray]:
        """The produced columns by name."""
        return {c: getattr(self, c) for c in self.COLUMNS if getattr(self, c) is not None}

    def graph(self, group: Any) -> "Graph":
        """The state graph of one task group (G2PO estimates only).

        ``group`` is one of the ids given as ``group=``.
        """
        if self.next_node is None or self.next_value is None:
            raise ConfigError("graph: the state graph needs a G2PO estimate", "estimator")
        ids = self._group
        if ids.dtype == object:
            first_row = next((i for i, g in enumerate(ids) if g == group), None)
        else:
            hits = np.flatnonzero(ids == group)
            first_row = int(hits[0]) if len(hits) else None
        if first_row is None:
            raise InputError(f"group: {group!r} is not a group of this estimate", "group")
        index = int(self._group_index[first_row])
        native = _native.graph(
            self._batch, index, self.advantage, self.node, self.next_node, self.node_value, self.next_value,
            self._anchors
        )
        return Graph(native)


class Graph:
    """The state graph of one task group: nodes (fused states and the two
    terminals) and edges (distinct transitions, with counts, rows and mean
    advantage)."""

    def __init__(self, native: Any):
        self._native = native

    @property
    def group(self) -> str:
        return self._native.group

    def to_dot(self) -> str:
        """Graphviz DOT text."""
        return self._native.to_dot()

    def to_json(self) -> str:
        """JSON text with the group, its statistics, nodes and edges."""
        return self._native.to_json()

    def edges(self) -> list[tuple[int, int, int, float, list[int]]]:
        """``(source, target, count, mean_advantage, rows)`` per edge; -1 / -2 are the terminals."""
        return self._native.edges()

    def nodes(self) -> list[tuple[int, str, int, float, str]]:
        """``(id, kind, visits, value, label)`` per node."""
        return self._native.nodes()

    def stats(self) -> dict[str, Any]:
        """States, terminals, edges, rows, mean visits per node, single-visit fraction, self-loops, cycles."""
        return json.loads(self._native.stats_json())

    def __repr__(self) -> str:
        s = self.stats()
        return f"Graph(group={self.group!r}, states={s['states']}, edges={s['edges']}, rows={s['rows']})"


def estimate(
    config: Config,
    *,
    group: Any,
    traj: Any,
    episode_reward: Any,
    step: Any = None,
    anchors: Any = None,
    keys: Any = None,
    reward: Any = None,
    valid: Any = None,
    response_len: Any = None,
    num_threads: int | None = None,
) -> Estimate:
    """Advantages of a batch of agent steps (one row per step).

    Args:
        config: the estimator and its options.
        group: task-group id per row (the peers' ``uid``): any hashable values (object
            array, e.g. uuid strings) or integers; groups need not be contiguous.
        traj: trajectory id per row, unique across the batch (same kinds as ``group``).
        episode_reward: float64/float32, the trajectory's episode reward on each of its rows.
        step: ``None`` (each trajectory's rows are its steps in row order) or an integer array
            of 0-based step indices (then rows may come in any order).
        anchors: object array of ``str``, the observation each step acted on (hashed with
            XXH3-64 after ``config.canonicalizers``); or
        keys: uint64/int64 state keys computed by the caller (exclusive with ``anchors``).
        reward: float64/float32 env reward per row (GiGPO's discounted returns); default 0.
        valid: bool per row, whether the action was valid; default all valid.
        response_len: token count per row (only for exports); default 1.
        num_threads: threads for this call; ``None`` uses ``RAYON_NUM_THREADS`` or all cores.
            Results do not depend on it.

    Numeric arrays must be 1-D and C-contiguous (they are read in place);
    torch tensors are viewed through ``.numpy()``. Every bad input raises an
    :class:`InputError` / :class:`InputTypeError` / :class:`ConfigError` naming
    the argument and, where one row is at fault, the row.
    """
    if not isinstance(config, Config):
        raise ConfigError(f"config: expected g2po_rs.Config, got {type(config).__name__}", "config")
    group = _as_array(group, "group", ids=True)
    anchors_arr = _as_array(anchors, "anchors", ids=True)
    out = _native.estimate(
        **config._native_kwargs(),
        group=group,
        traj=_as_array(traj, "traj", ids=True),
        step=_as_array(step, "step"),
        anchors=anchors_arr,
        keys=_as_array(keys, "keys"),
        reward=_as_array(reward, "reward"),
        episode_reward=_as_array(episode_reward, "episode_reward"),
        valid=_as_array(valid, "valid"),
        response_len=_as_array(response_len, "response_len"),
        num_threads=num_threads,
    )
    batch = out.pop("batch")
    group_index = out.pop("group_index")
    return Estimate(**out, _batch=batch, _group=group, _anchors=anchors_arr, _group_index=group_index)


def keys(texts: Any, canonicalizers: Sequence[str] = (), num_threads: int | None = None) -> np.ndarray:
    """State keys (uint64) of texts, exactly as the engine computes them:
    ``XXH3_64(canonical(text).encode("utf-8"), seed=0)`` (the ``xxhash`` package's
    ``xxh3_64_intdigest``)."""
    if isinstance(canonicalizers, str):
        raise ConfigError("canonicalizers: expected a sequence of names, got a str", "canonicalizers")
    return _native.keys(_as_array(texts, "texts", ids=True), list(canonicalizers), num_threads)


def canonical(text: str, canonicalizers: Sequence[str] = ()) -> str:
    """The canonical form of ``text`` (what :func:`keys` hashes)."""
    return _native.canonical(text, list(canonicalizers))


def broadcast(advantage: Any, response_mask: Any, num_threads: int | None = None) -> Any:
    """Token advantages: ``advantage[:, None] * response_mask`` as float32 [rows, L].

    Takes numpy arrays or torch tensors (any mask dtype and strides) and
    returns the same kind (a torch tensor shares the numpy buffer, on the
    mask's device).
    """
    is_torch = type(response_mask).__module__.startswith("torch")
    mask = _as_array(response_mask, "response_mask")
    adv = _as_array(advantage, "advantage")
    if isinstance(adv, np.ndarray) and adv.dtype not in (np.float32, np.float64):
        raise InputTypeError(f"advantage: expected float32 or float64, got {adv.dtype}", "advantage")
    out = _native.broadcast(np.ascontiguousarray(adv), mask, num_threads)
    if is_torch:
        import torch

        return torch.from_numpy(out).to(response_mask.device)
    return out


def threads_used(num_threads: int | None = None) -> int:
    """How many threads a call with ``num_threads`` uses."""
    return _native.threads_used(num_threads)
