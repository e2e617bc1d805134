"""keys (against the xxhash package), broadcast (numpy and torch), the state
graph exports, outputs handed over without copies, and the GIL released."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

import g2po_rs
from reference_batches import obj, rollout

xxhash = pytest.importorskip("xxhash")


@pytest.mark.parametrize("length", [0, 1, 3, 4, 8, 9, 16, 17, 128, 129, 240, 241, 1000, 5000])
def test_keys_match_xxh3_of_utf8(length):
    text = ("kitchen é ✓ " * 1000)[:length]
    keys = g2po_rs.keys(obj([text, text + "!"]))
    assert keys.dtype == np.uint64
    assert int(keys[0]) == xxhash.xxh3_64_intdigest(text.encode("utf-8"))
    assert int(keys[1]) == xxhash.xxh3_64_intdigest((text + "!").encode("utf-8"))


def test_keys_with_canonicalizers():
    texts = obj(["At turn 3:  Moves: 4 hall", "At turn 9: Moves: 10 hall", "hall"])
    keys = g2po_rs.keys(texts, ["text_env"])
    assert keys[0] == keys[1]
    canon = g2po_rs.canonical(texts[0], ["text_env"])
    assert int(keys[0]) == xxhash.xxh3_64_intdigest(canon.encode("utf-8"))
    assert g2po_rs.keys(texts)[0] != g2po_rs.keys(texts)[1]


def test_keys_equal_anchor_grouping():
    """Passing keys computed by `keys` gives the same estimate as passing texts."""
    b = rollout(np.random.default_rng(2), groups=4, n=4, max_steps=5)
    cfg = g2po_rs.Config("g2po")
    common = dict(group=b.uid, traj=b.traj_uid, episode_reward=np.array(b.episode_rewards, dtype=np.float64),
                  valid=b.valid)
    a = g2po_rs.estimate(cfg, anchors=b.anchor_obs, **common)
    k = g2po_rs.estimate(cfg, keys=g2po_rs.keys(b.anchor_obs).view(np.int64), **common)
    np.testing.assert_array_equal(a.advantage, k.advantage)


def test_broadcast_numpy_and_torch():
    adv = np.array([1.5, -2.0, np.nan], dtype=np.float32)
    mask = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=np.int64)
    out = g2po_rs.broadcast(adv, mask)
    assert out.dtype == np.float32 and out.shape == (3, 3)
    np.testing.assert_array_equal(out[:2], adv[:2, None] * mask[:2])
    assert np.isnan(out[2]).all()  # NaN * 0 stays NaN, as in torch
    torch = pytest.importorskip("torch")
    tmask = torch.tensor(mask)
    t = g2po_rs.broadcast(torch.tensor(adv), tmask)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    ref = torch.tensor(adv).unsqueeze(-1) * tmask
    assert torch.equal(t[:2], ref[:2])
    strided = torch.zeros(3, 6, dtype=torch.int64)[:, ::2]
    strided[:] = tmask
    assert torch.equal(g2po_rs.broadcast(torch.tensor(adv), strided)[:2], ref[:2])
    for m in (mask.astype(bool), mask.astype(np.float32), mask.astype(np.int32)):
        np.testing.assert_array_equal(g2po_rs.broadcast(adv, m)[:2], out[:2])
    with pytest.raises(g2po_rs.InputError):
        g2po_rs.broadcast(adv[:2], mask)
    with pytest.raises(g2po_rs.InputTypeError):
        g2po_rs.broadcast(adv, mask[0])


def test_outputs_are_not_copies():
    """The estimate's arrays are Rust's buffers handed to numpy (their base is
    rust-numpy's container of the Vec), not copies."""
    b = rollout(np.random.default_rng(4), groups=2, n=3, max_steps=4)
    est = g2po_rs.estimate(g2po_rs.Config("g2po"), group=b.uid, traj=b.traj_uid, anchors=b.anchor_obs,
                           episode_reward=np.array(b.episode_rewards, dtype=np.float64))
    for col in est.to_dict().values():
        assert col.flags.c_contiguous and col.flags.writeable and not col.flags.owndata
        assert type(col.base).__name__ == "PySliceContainer", type(col.base)
    assert est.advantage.dtype == np.float32 and est.node.dtype == np.int32


def test_state_graph_exports():
    group = obj(["u"] * 4)
    traj = obj(["a", "a", "b", "b"])
    anchors = obj(["hall", "door", "hall", "wall"])
    est = g2po_rs.estimate(g2po_rs.Config("g2po"), group=group, traj=traj, anchors=anchors,
                           episode_reward=np.array([10, 10, 0, 0.0]))
    g = est.graph("u")
    assert g.group == "u"
    nodes = {n[0]: n for n in g.nodes()}
    assert nodes[0][4] == "hall" and nodes[0][2] == 2 and nodes[-1][1] == "success" and nodes[-2][1] == "failure"
    edges = sorted(g.edges())
    assert [(e[0], e[1], e[2], e[4]) for e in edges] == [(0, 1, 1, [0]), (0, 2, 1, [2]), (1, -1, 1, [1]),
                                                       (2, -2, 1, [3])]
    data = json.loads(g.to_json())
    assert data["stats"]["states"] == 3 and len(data["edges"]) == 4
    assert g.stats()["rows"] == 4
    dot = g.to_dot()
    assert dot.startswith("digraph") and "hall" in dot and "->" in dot


def test_graph_rows_follow_the_callers_order():
    """With explicit steps out of row order, graph rows are the caller's rows."""
    group = obj(["u"] * 4)
    traj = obj(["a", "b", "a", "b"])
    step = np.array([1, 1, 0, 0])
    anchors = obj(["door", "wall", "hall", "hall"])
    est = g2po_rs.estimate(g2po_rs.Config("g2po"), group=group, traj=traj, step=step, anchors=anchors,
                           episode_reward=np.array([10, 0, 10, 0.0]))
    edges = {(e[0], e[1]): e[4] for e in est.graph("u").edges()}
    hall = est.node[2]
    assert est.node[3] == hall and est.next_node[0] == -1 and est.next_node[1] == -2
    assert sorted(edges[(hall, est.node[0])] + edges[(hall, est.node[1])]) == [2, 3]


def test_gil_is_released():
    """Another Python thread runs while a large estimate is in the engine."""
    b = rollout(np.random.default_rng(6), groups=200, n=8, max_steps=40)
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0)

    cfg = g2po_rs.Config("g2po", similarity=None)
    kwargs = dict(group=b.uid, traj=b.traj_uid, anchors=b.anchor_obs,
                  episode_reward=np.array(b.episode_rewards, dtype=np.float64), num_threads=1)
    g2po_rs.estimate(cfg, **kwargs)
    t = threading.Thread(target=ticker)
    t.start()
    try:
        start = time.perf_counter()
        for _ in range(5):
            g2po_rs.estimate(cfg, **kwargs)
        end = time.perf_counter()
    finally:
        stop.set()
        t.join()
    inside = [x for x in ticks if start < x < end]
    # With the GIL held for the whole call the ticker could not run at all in
    # between; released, it ticks many times.
    assert len(inside) > 20, f"only {len(inside)} ticks during {end - start:.3f} s"


def test_num_threads_honours_rayon_num_threads():
    import os
    import subprocess
    import sys

    code = "import g2po_rs; print(g2po_rs.threads_used(), g2po_rs.threads_used(5))"
    env = {**os.environ, "RAYON_NUM_THREADS": "3"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd="/")
    assert out.stdout.split() == ["3", "5"]


@pytest.mark.parametrize("estimator", ["rloo", "reinforce_plus_plus_baseline", "grpo_passk", "grpo"])
def test_native_baselines_agree_with_the_verl_drop_ins(estimator):
    """The engine's RLOO, REINFORCE++-baseline, pass@k and GRPO (natively) give
    what g2po_rs.compat.core_algos gives for the same rows."""
    torch = pytest.importorskip("torch")
    from g2po_rs.compat import core_algos

    rng = np.random.default_rng(12)
    b = rollout(rng, groups=5, n=4, max_steps=4)
    bs = len(b.uid)
    ep = np.array([float(e) for e in b.episode_rewards])
    lens = rng.integers(1, 5, size=bs)
    est = g2po_rs.estimate(g2po_rs.Config(estimator), group=b.uid, traj=b.traj_uid, episode_reward=ep,
                           valid=b.valid, response_len=lens)
    L = int(lens.max())
    mask = torch.tensor((np.arange(L)[None, :] < lens[:, None]).astype(np.int64))
    tlr = torch.zeros(bs, L)
    tlr[torch.arange(bs), torch.tensor(lens - 1)] = torch.tensor((ep - 0.1 * ~b.valid).astype(np.float32))
    fn = {"rloo": "compute_rloo_outcome_advantage",
          "reinforce_plus_plus_baseline": "compute_reinforce_plus_plus_baseline_outcome_advantage",
          "grpo_passk": "compute_grpo_passk_outcome_advantage", "grpo": "compute_grpo_outcome_advantage"}[estimator]
    tokens, _ = getattr(core_algos, fn)(tlr, mask, b.uid, b.traj_uid)
    ours = g2po_rs.broadcast(est.advantage, mask)
    np.testing.assert_allclose(ours.numpy(), tokens.numpy(), atol=1e-5, rtol=0)


def test_native_pass_at_k_needs_two_rows():
    with pytest.raises(g2po_rs.InputError) as err:
        g2po_rs.estimate(g2po_rs.Config("grpo_passk"), group=obj(["a", "b", "b"]), traj=obj(["x", "y", "z"]),
                         episode_reward=np.array([1.0, 0.0, 1.0]))
    assert err.value.argument == "group"
