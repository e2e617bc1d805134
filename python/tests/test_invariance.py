"""Order, duplication and renaming invariances (hypothesis), and identical
results for 1 and many threads."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import g2po_rs
from g2po_rs import compat
from g2po_rs.compat import core_g2po, core_gigpo

from reference_batches import data_proto, obj, rollout, tokens

torch = pytest.importorskip("torch")

CONFIGS = [
    g2po_rs.Config("grpo"),
    g2po_rs.Config("gigpo", mode="mean_norm"),
    g2po_rs.Config("gigpo"),
    g2po_rs.Config("g2po"),
    g2po_rs.Config("g2po", mode="mean_norm", stats_over="trajectories", step_weight=0.8),
]

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def native(cfg, b, order=None, *, rename=None, num_threads=None, with_steps=True):
    bs = len(b.uid)
    order = np.arange(bs) if order is None else order
    steps = _steps(b)
    uid, traj = b.uid, b.traj_uid
    if rename is not None:
        uid, traj = rename(uid), rename(traj)
    return g2po_rs.estimate(
        cfg,
        group=uid[order],
        traj=traj[order],
        step=steps[order] if with_steps else None,
        anchors=b.anchor_obs[order],
        reward=b.rewards.astype(np.float64)[order],
        episode_reward=np.array(b.episode_rewards, dtype=np.float64)[order],
        valid=b.valid[order],
        num_threads=num_threads,
    )


def _steps(b) -> np.ndarray:
    seen: dict = {}
    out = np.empty(len(b.uid), dtype=np.int64)
    for i, t in enumerate(b.traj_uid):
        out[i] = seen.get(t, 0)
        seen[t] = out[i] + 1
    return out


batches = st.builds(
    lambda seed, groups, n, steps: rollout(np.random.default_rng(seed), groups, n, steps),
    st.integers(0, 2**32 - 1), st.integers(1, 4), st.integers(1, 4), st.integers(1, 6),
)


@FAST
@given(batches, st.integers(0, 2**32 - 1), st.sampled_from(CONFIGS))
def test_native_row_order(b, seed, cfg):
    """Any permutation of the rows (steps given) permutes the advantages."""
    order = np.random.default_rng(seed).permutation(len(b.uid))
    base, shuffled = native(cfg, b), native(cfg, b, order)
    np.testing.assert_allclose(shuffled.advantage, base.advantage[order], atol=1e-6, rtol=0)
    if cfg.estimator == "g2po":
        np.testing.assert_allclose(shuffled.node_value, base.node_value[order], atol=1e-6, rtol=0)


@FAST
@given(batches, st.sampled_from(CONFIGS), st.sampled_from(["ints", "tuples", "fresh_uuids"]))
def test_native_renaming(b, cfg, how):
    """Renaming groups and trajectories (any hashable ids) changes nothing, bit for bit."""
    def rename(ids):
        distinct = {x: i for i, x in enumerate(dict.fromkeys(ids))}
        if how == "ints":
            return np.array([distinct[x] * 7 + 3 for x in ids], dtype=np.int64)
        if how == "tuples":
            return obj([("id", distinct[x]) for x in ids])
        return obj([f"renamed-{distinct[x]}" for x in ids])

    base, renamed = native(cfg, b), native(cfg, b, rename=rename)
    for col, value in base.to_dict().items():
        np.testing.assert_array_equal(getattr(renamed, col), value, err_msg=col)


@FAST
@given(batches, st.sampled_from(CONFIGS))
def test_native_threads(b, cfg):
    """1 thread and 4 threads give identical results (bit for bit)."""
    one, many = native(cfg, b, num_threads=1), native(cfg, b, num_threads=4)
    for col, value in one.to_dict().items():
        np.testing.assert_array_equal(getattr(many, col), value, err_msg=col)


def test_threads_on_a_large_batch():
    b = rollout(np.random.default_rng(9), groups=64, n=8, max_steps=30)
    for cfg in CONFIGS:
        one, many = native(cfg, b, num_threads=1), native(cfg, b, num_threads=3)
        for col, value in one.to_dict().items():
            np.testing.assert_array_equal(getattr(many, col), value, err_msg=f"{cfg.estimator} {col}")
    assert g2po_rs.threads_used(3) == 3


def _phase_two(b, order, tlr, mask, which):
    if which == "gigpo":
        returns = core_gigpo.compute_step_discounted_returns(data_proto(b, mask.shape[1]), 0.95)
        return core_gigpo.compute_gigpo_outcome_advantage(
            tlr[order], returns[order], mask[order], b.anchor_obs[order], b.uid[order], b.traj_uid[order],
            mode="mean_std_norm")[0]
    v, g, n = core_g2po.compute_group_aggregation_values(data_proto(b, mask.shape[1]))
    return core_g2po.compute_g2po_outcome_advantage(
        tlr[order], v[order], mask[order], b.uid[order], b.traj_uid[order], g[order], n[order],
        b.is_action_valid[order], mode="mean_std_norm")[0]


@FAST
@given(batches, st.integers(0, 2**32 - 1), st.sampled_from(["gigpo", "g2po"]))
def test_compat_order_and_duplication(b, seed, which):
    """Phase two after a reordering gives each row the value it had; after
    appending duplicates (which count as members of their groups, as in the
    reference: the integration test checks the values against it) every
    duplicate gets exactly its original's value."""
    compat.configure(print_group_size=False)
    rng = np.random.default_rng(seed)
    tlr, mask = tokens(b, rng, 4, 0.1)
    bs = len(b.uid)
    base = _phase_two(b, np.arange(bs), tlr, mask, which)
    perm = rng.permutation(bs)
    np.testing.assert_allclose(_phase_two(b, perm, tlr, mask, which), base[perm], atol=1e-6, rtol=0)
    dup = np.concatenate([perm, rng.integers(0, bs, size=max(1, bs // 3))])
    with_dups = _phase_two(b, dup, tlr, mask, which)
    rows = with_dups.numpy()[:, 0]
    by_row = {}
    for pos, r in enumerate(dup):
        assert by_row.setdefault(int(r), rows[pos]) == rows[pos], "a duplicate differs from its original"


@FAST
@given(batches, st.sampled_from(["gigpo", "g2po"]))
def test_compat_renaming(b, which):
    """Other uid / traj_uid names (fresh uuids, ints) give the same advantages."""
    compat.configure(print_group_size=False)
    rng = np.random.default_rng(1)
    tlr, mask = tokens(b, rng, 4, 0.1)
    bs = len(b.uid)
    base = _phase_two(b, np.arange(bs), tlr, mask, which)
    for fresh in (lambda i: f"x{i:05d}", lambda i: i * 3 + 1):
        uid_map = {u: fresh(i) for i, u in enumerate(dict.fromkeys(b.uid))}
        traj_map = {t: fresh(10_000 + i) for i, t in enumerate(dict.fromkeys(b.traj_uid))}
        renamed = type(b)(**vars(b))
        renamed.uid = obj([uid_map[u] for u in b.uid])
        renamed.traj_uid = obj([traj_map[t] for t in b.traj_uid])
        np.testing.assert_array_equal(_phase_two(renamed, np.arange(bs), tlr, mask, which).numpy(), base.numpy())


def test_gigpo_anchor_cache_gives_the_same_result():
    """The anchor cache (texts hashed in phase one, found by identity in phase
    two) changes nothing: same tensors with it off, and objects it has not
    seen (equal texts in new str objects) are hashed as usual."""
    rng = np.random.default_rng(8)
    b = rollout(rng, groups=6, n=4, max_steps=6)
    tlr, mask = tokens(b, rng, 4, 0.1)
    bs = len(b.uid)
    order = rng.permutation(bs)
    fresh = b.anchor_obs[order].copy()
    for i in range(0, bs, 3):  # new, equal str objects on a third of the rows
        fresh[i] = "".join(list(fresh[i]))
    results = []
    for cache in (True, False):
        compat.configure(anchor_cache=cache, print_group_size=False)
        returns = core_gigpo.compute_step_discounted_returns(data_proto(b, 4), 0.95)
        assert (compat._ANCHORS is not None) == cache
        results.append(core_gigpo.compute_gigpo_outcome_advantage(
            tlr[order], returns[order], mask[order], fresh, b.uid[order], b.traj_uid[order],
            mode="mean_std_norm")[0])
    assert torch.equal(results[0], results[1])


class _Reversed(str):
    """A str that sorts backwards: Python's own order must decide."""

    def __lt__(self, other):
        return str.__gt__(self, other)


@pytest.mark.parametrize(
    "ids, order",
    [
        (["b", "a", "c\u00e9", "c"], ["a", "b", "c", "c\u00e9"]),  # code points, as Python sorts str
        ([10, 9, 100], [9, 10, 100]),  # numbers, not their text ("10" < "100" < "9")
        ([_Reversed("a"), _Reversed("c"), _Reversed("b")], ["c", "b", "a"]),
    ],
)
def test_compat_phase_one_numbers_trajectories_in_pythons_sorted_order(ids, order):
    """The fork numbers nodes walking trajectories in sorted id order; each
    trajectory here visits one state of its own, so its node is its rank."""
    import types

    bs = len(ids)
    traj = np.empty(bs, dtype=object)
    traj[:] = ids
    dp = types.SimpleNamespace(
        batch={"input_ids": torch.zeros(bs, 2, dtype=torch.int64), "responses": torch.zeros(bs, 2, dtype=torch.int64)},
        non_tensor_batch={
            "uid": obj(["task"] * bs), "traj_uid": traj, "anchor_obs": obj([f"state {i}" for i in ids]),
            "episode_rewards": np.zeros(bs, dtype=np.float32), "rewards": np.zeros(bs, dtype=np.float32),
            "active_masks": np.ones(bs, dtype=bool), "is_action_valid": np.ones(bs, dtype=bool),
        },
    )
    _, nodes, _ = core_g2po.compute_group_aggregation_values(dp)
    rank = {str(i): r for r, i in enumerate(order)}
    assert nodes.tolist() == [rank[str(i)] for i in ids]


def test_compat_phase_one_unsortable_trajectory_ids_are_a_typed_error():
    import types

    from g2po_rs.errors import InputTypeError

    ids = [1, "a"]
    traj = np.empty(2, dtype=object)
    traj[:] = ids
    dp = types.SimpleNamespace(
        batch={"input_ids": torch.zeros(2, 2, dtype=torch.int64), "responses": torch.zeros(2, 2, dtype=torch.int64)},
        non_tensor_batch={
            "uid": obj(["task"] * 2), "traj_uid": traj, "anchor_obs": obj(["s0", "s1"]),
            "episode_rewards": np.zeros(2, dtype=np.float32),
        },
    )
    with pytest.raises(InputTypeError) as err:
        core_g2po.compute_group_aggregation_values(dp)
    assert err.value.argument == "traj_uid"
