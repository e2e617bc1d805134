"""Every conformance vector, reproduced to 1e-4 through the native API and
through the compat functions called as the trainers call them."""

from __future__ import annotations

import numpy as np
import pytest

import g2po_rs
from g2po_rs.compat import core_algos, core_g2po, core_gigpo

from conftest import Trainer, load_vector, vector_files

TOL = 1e-4
FILES = vector_files()


def expected(vec: dict, field: str) -> np.ndarray:
    return np.array([e[field] for e in vec["expected"]], dtype=np.float64)


def config(vec: dict) -> g2po_rs.Config:
    p = vec["params"]
    return g2po_rs.Config(
        estimator=vec["estimator"],
        mode=p["mode"],
        gamma=p["gamma"],
        epsilon=p["epsilon"],
        step_weight=p["step_advantage_w"],
        invalid_penalty=p["invalid_action_penalty"],
        stats_over=p["stats_over"],
    )


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_native(path):
    vec = load_vector(path)
    t = Trainer(vec["steps"], vec["params"]["invalid_action_penalty"])
    est = g2po_rs.estimate(
        config(vec),
        group=t.uid,
        traj=t.traj_uid,
        step=t.step,
        anchors=t.anchor_obs,
        reward=t.rewards.astype(np.float64),
        episode_reward=np.array([r["episode_reward"] for r in vec["steps"]]),
        valid=t.valid,
        response_len=t.lens,
    )
    np.testing.assert_allclose(est.advantage, expected(vec, "advantage"), atol=TOL, rtol=0)
    if vec["estimator"] != "grpo":
        np.testing.assert_allclose(est.episode, expected(vec, "episode_advantage"), atol=TOL, rtol=0)
        np.testing.assert_allclose(est.step, expected(vec, "step_advantage"), atol=TOL, rtol=0)
    if vec["estimator"] == "gigpo":
        np.testing.assert_allclose(est.step_return, expected(vec, "step_return"), atol=TOL, rtol=0)
        np.testing.assert_array_equal(est.node, expected(vec, "step_group"))
    if vec["estimator"] == "g2po":
        np.testing.assert_array_equal(est.node, expected(vec, "node"))
        np.testing.assert_array_equal(est.next_node, expected(vec, "next_node"))
        np.testing.assert_allclose(est.node_value, expected(vec, "node_value"), atol=TOL, rtol=0)


def token_rows(tokens, lens) -> np.ndarray:
    """Each row's value (tokens are equal on the response; 0 beyond)."""
    arr = tokens.numpy()
    rows = arr[:, 0].astype(np.float64)
    for i, n in enumerate(lens):
        assert np.all(arr[i, :n] == arr[i, 0]), f"row {i}: response tokens differ"
        assert np.all(arr[i, n:] == 0), f"row {i}: padding is not 0"
    return rows


def compat_advantage(vec: dict, t: Trainer):
    p = vec["params"]
    if vec["estimator"] == "grpo":
        return core_algos.compute_grpo_outcome_advantage(
            token_level_rewards=t.token_level_rewards,
            response_mask=t.response_mask,
            index=t.uid,
            traj_index=t.traj_uid,
            norm_adv_by_std_in_grpo=p["mode"] == "mean_std_norm",
        )
    if vec["estimator"] == "gigpo":
        step_rewards = core_gigpo.compute_step_discounted_returns(t.data_proto(), p["gamma"])
        # The trainer subtracts the invalid penalty from the returns in place.
        import torch

        step_rewards -= p["invalid_action_penalty"] * torch.tensor(1.0 - t.valid.astype(np.float32))
        return core_gigpo.compute_gigpo_outcome_advantage(
            token_level_rewards=t.token_level_rewards,
            step_rewards=step_rewards,
            response_mask=t.response_mask,
            anchor_obs=t.anchor_obs,
            index=t.uid,
            traj_index=t.traj_uid,
            epsilon=p["epsilon"],
            step_advantage_w=p["step_advantage_w"],
            mode=p["mode"],
        )
    values, group_idx, next_group_idx = core_g2po.compute_group_aggregation_values(t.data_proto())
    np.testing.assert_allclose(values, expected(vec, "node_value"), atol=TOL, rtol=0)
    np.testing.assert_array_equal(next_group_idx < 0, expected(vec, "next_node") < 0)
    assert values.dtype == np.float64 and group_idx.dtype == np.int64 and next_group_idx.dtype == np.int64
    return core_g2po.compute_g2po_outcome_advantage(
        token_level_rewards=t.token_level_rewards,
        step_rewards=values,
        response_mask=t.response_mask,
        index=t.uid,
        traj_index=t.traj_uid,
        group_idx=group_idx,
        next_group_idx=next_group_idx,
        is_action_valid=t.is_action_valid,
        epsilon=p["epsilon"],
        step_advantage_w=p["step_advantage_w"],
        mode=p["mode"],
    )


@pytest.mark.parametrize("numerics", ["g2po", "reference"])
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_compat(path, numerics, capsys):
    from g2po_rs import compat

    compat.configure(numerics=numerics)
    vec = load_vector(path)
    t = Trainer(vec["steps"], vec["params"]["invalid_action_penalty"])
    scores, returns = compat_advantage(vec, t)
    assert scores is returns, "the references return one tensor twice"
    assert scores.dtype.__str__() == "torch.float32" and tuple(scores.shape) == tuple(t.token_level_rewards.shape)
    np.testing.assert_allclose(token_rows(scores, t.lens), expected(vec, "advantage"), atol=TOL, rtol=0)
    if vec["estimator"] == "gigpo":
        assert "Avg size of step-level group" in capsys.readouterr().out
