"""Every bad input raises a typed g2po_rs exception naming the argument (and the
row where one row is at fault); never a crash or a PanicException."""

from __future__ import annotations

import numpy as np
import pytest

import g2po_rs
from g2po_rs import ConfigError, G2poError, InputError, InputTypeError
from g2po_rs.compat import core_algos, core_g2po, core_gigpo

from reference_batches import data_proto, obj, rollout, tokens

torch = pytest.importorskip("torch")


def small():
    group = obj(["g", "g", "g", "g", "h", "h"])
    traj = obj(["a", "a", "b", "b", "c", "d"])
    return dict(
        group=group,
        traj=traj,
        anchors=obj(["s0", "s1", "s0", "s2", "s0", "s0"]),
        episode_reward=np.array([10.0, 10.0, 0.0, 0.0, 10.0, 0.0]),
        reward=np.array([0.0, 10.0, 0.0, 0.0, 10.0, 0.0]),
        valid=np.array([True, True, False, True, True, True]),
        response_len=np.array([3, 2, 4, 1, 2, 2]),
    )


CFG = g2po_rs.Config("g2po")


def raises(exc, argument, row=None, **kwargs):
    cols = small()
    cols.update(kwargs)
    with pytest.raises(exc) as err:
        g2po_rs.estimate(CFG, **cols)
    assert err.value.argument == argument, err.value
    assert err.value.row == row, err.value
    assert isinstance(err.value, G2poError)
    assert argument in str(err.value)
    if row is not None:
        assert f"row {row}" in str(err.value)
    return err.value


def test_the_small_batch_is_valid():
    assert g2po_rs.estimate(CFG, **small()).advantage.shape == (6,)


def test_wrong_dtypes():
    raises(InputTypeError, "episode_reward", episode_reward=np.array(["1"] * 6))
    raises(InputTypeError, "episode_reward", episode_reward=np.arange(6))  # ints are not rewards
    raises(InputTypeError, "valid", valid=np.ones(6, dtype=np.int32))
    raises(InputTypeError, "response_len", response_len=np.ones(6, dtype=np.float32))
    raises(InputTypeError, "keys", anchors=None, keys=np.ones(6, dtype=np.float64))
    raises(InputTypeError, "group", group=np.ones(6, dtype=np.float32) + 0.5j)
    raises(InputTypeError, "episode_reward", episode_reward="nope")


def test_mismatched_lengths():
    raises(InputError, "traj", traj=obj(["a"] * 5))
    raises(InputError, "episode_reward", episode_reward=np.zeros(7))
    raises(InputError, "anchors", anchors=obj(["s"] * 3))
    raises(InputError, "valid", valid=np.ones(2, dtype=bool))


def test_non_finite_and_huge_rewards():
    r = np.array([10.0, 10.0, 0.0, 0.0, 10.0, np.nan])
    raises(InputError, "episode_reward", 5, episode_reward=r)
    raises(InputError, "reward", 2, reward=np.array([0, 0, np.inf, 0, 0, 0.0]))
    raises(InputError, "reward", 1, reward=np.array([0, 1e300, 0, 0, 0, 0.0]))


def test_non_contiguous_array():
    base = np.zeros(12)
    base[::2] = [10.0, 10.0, 0.0, 0.0, 10.0, 0.0]
    e = raises(InputTypeError, "episode_reward", episode_reward=base[::2])
    assert "contiguous" in str(e)


def test_bad_anchors():
    raises(InputTypeError, "anchors", 3, anchors=obj(["s0", "s1", "s0", None, "s0", "s0"]))
    raises(InputTypeError, "anchors", 1, anchors=obj(["s0", 5, "s0", "s2", "s0", "s0"]))
    raises(InputTypeError, "anchors", anchors=np.zeros(6))
    raises(InputError, "anchors", anchors=None)
    raises(InputError, "anchors", keys=np.zeros(6, dtype=np.uint64))  # both given


def test_trajectory_structure():
    raises(InputError, "traj", 4, traj=obj(["a", "a", "b", "b", "a", "d"]))  # "a" in two groups
    raises(InputError, "episode_reward", 1, episode_reward=np.array([10.0, 0.0, 0, 0, 10, 0]))
    raises(InputError, "step", 1, step=np.array([0, 0, 0, 1, 0, 0]))  # duplicate step
    raises(InputError, "step", 3, step=np.array([0, 1, 0, 2, 0, 0]))  # gap
    raises(InputError, "step", row=4, step=np.array([0, 1, 0, 1, -1, 0]))
    raises(InputError, "response_len", 2, response_len=np.array([1, 1, -3, 1, 1, 1]))


def test_unhashable_group_ids():
    raises(InputTypeError, "group", 2, group=obj(["g", "g", [1], "g", "h", "h"]))


def test_empty_batch():
    raises(InputError, "group", **{k: v[:0] for k, v in small().items()})


def test_bad_config():
    for cfg, argument in [
        (g2po_rs.Config("ppo"), "estimator"),
        (g2po_rs.Config(mode="z_norm"), "mode"),
        (g2po_rs.Config(gamma=1.5), "gamma"),
        (g2po_rs.Config(epsilon=-1.0), "epsilon"),
        (g2po_rs.Config(stats_over="tokens"), "stats_over"),
        (g2po_rs.Config(similarity=2.0), "similarity_thresh"),
        (g2po_rs.Config(terminal="zero"), "terminal"),
        (g2po_rs.Config(canonicalizers=("shout",)), "canonicalizers"),
        (g2po_rs.Config(estimator="gigpo", similarity=0.9), None),
    ]:
        kwargs = small()
        if argument is None:  # similarity needs text, keys given
            kwargs["keys"] = np.arange(6, dtype=np.uint64)
            kwargs["anchors"] = None
            argument = "similarity"
        with pytest.raises(ConfigError) as err:
            g2po_rs.estimate(cfg, **kwargs)
        assert err.value.argument == argument, (cfg, err.value)
    with pytest.raises(ConfigError):
        g2po_rs.estimate(CFG, num_threads=0, **small())
    with pytest.raises(ConfigError):
        g2po_rs.estimate("g2po", **small())


def test_errors_are_builtin_kinds_too():
    assert issubclass(InputError, ValueError) and issubclass(InputTypeError, TypeError)
    assert issubclass(ConfigError, ValueError)


def test_graph_errors():
    est = g2po_rs.estimate(CFG, **small())
    with pytest.raises(InputError):
        est.graph("missing")
    grpo = g2po_rs.estimate(g2po_rs.Config("grpo"), **small())
    with pytest.raises(ConfigError):
        grpo.graph("g")


# ---------------------------------------------------------------- compat


def trainer_batch():
    rng = np.random.default_rng(5)
    b = rollout(rng, groups=3, n=3, max_steps=4)
    tlr, mask = tokens(b, rng, 4, 0.1)
    return b, tlr, mask


def test_compat_unknown_next_node_in_phase_two():
    b, tlr, mask = trainer_batch()
    v, g, n = core_g2po.compute_group_aggregation_values(data_proto(b, 4))
    n = n.copy()
    n[4] = 99
    with pytest.raises(InputError) as err:
        core_g2po.compute_g2po_outcome_advantage(tlr, v, mask, b.uid, b.traj_uid, g, n, b.is_action_valid)
    assert (err.value.argument, err.value.row) == ("next_group_idx", 4)


def test_compat_inconsistent_node_values():
    b, tlr, mask = trainer_batch()
    v, g, n = core_g2po.compute_group_aggregation_values(data_proto(b, 4))
    twin = int(np.flatnonzero((g == g[0]) & (b.uid == b.uid[0]))[1])
    v = v.copy()
    v[twin] += 1.0
    with pytest.raises(InputError) as err:
        core_g2po.compute_g2po_outcome_advantage(tlr, v, mask, b.uid, b.traj_uid, g, n, b.is_action_valid)
    assert (err.value.argument, err.value.row) == ("step_rewards", twin)


def test_compat_phase_two_errors_name_the_first_row_in_any_order():
    """Phase two works uid by uid; its errors still name the first bad row of
    the batch as the trainer ordered it, and a disagreeing node value comes
    before an unknown next node, wherever each is."""
    b, tlr, mask = trainer_batch()
    v, g, n = core_g2po.compute_group_aggregation_values(data_proto(b, 4))
    rng = np.random.default_rng(11)
    order = rng.permutation(len(b.uid))
    uid, traj, valid = b.uid[order], b.traj_uid[order], b.is_action_valid[order]
    v, g, n, tlr, mask = v[order], g[order], n[order], tlr[order], mask[order]

    def call(values, nodes, nexts):
        return core_g2po.compute_g2po_outcome_advantage(tlr, values, mask, uid, traj, nodes, nexts, valid)

    # Unknown next nodes in two uids: the earlier row is named, whichever uid
    # comes first in the engine's own numbering.
    late = int(np.flatnonzero(uid == uid[0])[-1])
    early = int(np.flatnonzero(uid != uid[0])[0])
    assert early != late
    bad_n = n.copy()
    bad_n[[early, late]] = 99
    with pytest.raises(InputError) as err:
        call(v, g, bad_n)
    assert (err.value.argument, err.value.row) == ("next_group_idx", min(early, late))
    # A node value that disagrees with its earlier row, after an unknown next.
    twin = [int(r) for r in np.flatnonzero((g == g[late]) & (uid == uid[late]))]
    if len(twin) < 2:
        twin = next([int(a), int(c)] for a in range(len(g)) for c in range(a + 1, len(g))
                    if g[a] == g[c] and uid[a] == uid[c])
    bad_v = v.copy()
    bad_v[twin[1]] += 1.0
    bad_n = n.copy()
    bad_n[0] = 99
    with pytest.raises(InputError) as err:
        call(bad_v, g, bad_n)
    assert (err.value.argument, err.value.row) == ("step_rewards", twin[1])
    assert "on an earlier row but" in str(err.value)


def test_compat_bad_inputs():
    b, tlr, mask = trainer_batch()
    bs = len(b.uid)
    steps = torch.zeros(bs)
    base = dict(token_level_rewards=tlr, step_rewards=steps, response_mask=mask, anchor_obs=b.anchor_obs,
                index=b.uid, traj_index=b.traj_uid, mode="mean_std_norm")
    for change, exc, argument, row in [
        ({"mode": "z"}, ConfigError, "mode", None),
        ({"step_rewards": torch.zeros(bs - 1)}, InputError, "step_rewards", None),
        ({"index": b.uid[:-1]}, InputError, "index", None),
        ({"anchor_obs": None}, InputTypeError, "anchor_obs", None),
        ({"anchor_obs": obj([None] * bs)}, InputTypeError, "anchor_obs", 0),
        ({"step_rewards": torch.full((bs,), float("nan"))}, InputError, "step_rewards", 0),
        ({"enable_similarity": True, "similarity_thresh": 1.5}, ConfigError, "similarity_thresh", None),
    ]:
        with pytest.raises(exc) as err:
            core_gigpo.compute_gigpo_outcome_advantage(**{**base, **change})
        assert (err.value.argument, err.value.row) == (argument, row), change
    dp = data_proto(b, 4)
    dp.non_tensor_batch["active_masks"] = np.r_[np.ones(bs - 1, dtype=bool), False]
    with pytest.raises(InputError) as err:
        core_gigpo.compute_step_discounted_returns(dp, 0.95)
    assert (err.value.argument, err.value.row) == ("active_masks", bs - 1)
    dp = data_proto(b, 4)
    ep = b.episode_rewards.copy()
    ep[1] = np.float32(3.0) if ep[0] != 3.0 else np.float32(4.0)
    dp.non_tensor_batch["episode_rewards"] = ep
    if b.traj_uid[0] == b.traj_uid[1]:
        with pytest.raises(InputError) as err:
            core_g2po.compute_group_aggregation_values(dp)
        assert (err.value.argument, err.value.row) == ("episode_rewards", 1)
    one = np.zeros(bs, dtype=object)
    one[:] = "only"
    with pytest.raises(InputError) as err:
        core_algos.compute_grpo_passk_outcome_advantage(tlr, mask, obj(list(b.uid[:-1]) + ["alone"]), b.traj_uid)
    assert err.value.argument == "index" and err.value.row == bs - 1


def test_never_a_panic_exception():
    """Garbage of every kind gives a G2poError (or its built-in base), never
    pyo3's PanicException (a BaseException)."""
    cols = small()
    junk = [None, "x", 3, np.zeros((2, 3)), np.zeros(6, dtype=np.complex64), obj([object()] * 6),
            np.array([np.nan] * 6), np.zeros(0), [1, 2, 3, 4, 5, 6]]
    for name in cols:
        for value in junk:
            try:
                g2po_rs.estimate(CFG, **{**cols, name: value})
            except G2poError:
                pass
            except BaseException as e:  # noqa: BLE001
                assert type(e).__name__ != "PanicException", (name, value, e)
                raise AssertionError(f"{name}={value!r}: untyped {type(e).__name__}: {e}") from e
