"""A batch sharded by task group over Ray tasks gives results identical to one
process. Skipped, with a message, where ray is not installed."""

from __future__ import annotations

import numpy as np
import pytest

import g2po_rs
from g2po_rs.ray import estimate_sharded, shard_rows
from reference_batches import rollout

ray = pytest.importorskip("ray", reason="ray is not installed: the sharding test needs it (pip install ray)")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_shards_hold_whole_groups():
    b = rollout(np.random.default_rng(0), groups=7, n=3, max_steps=5)
    shards = shard_rows(b.uid, 3)
    assert sorted(np.concatenate(shards).tolist()) == list(range(len(b.uid)))
    owner = {}
    for s, rows in enumerate(shards):
        for u in b.uid[rows]:
            assert owner.setdefault(u, s) == s, "a group was split"


@pytest.mark.parametrize("cfg", [g2po_rs.Config("grpo"), g2po_rs.Config("gigpo"), g2po_rs.Config("g2po"),
                                 g2po_rs.Config("g2po", mode="mean_norm", canonicalizers=("text_env",))])
def test_sharded_equals_one_process(cluster, cfg):
    b = rollout(np.random.default_rng(1), groups=12, n=4, max_steps=8)
    cols = dict(group=b.uid, traj=b.traj_uid, anchors=b.anchor_obs, valid=b.valid,
                episode_reward=np.array(b.episode_rewards, dtype=np.float64), reward=b.rewards.astype(np.float64))
    local = g2po_rs.estimate(cfg, **cols)
    sharded = estimate_sharded(cfg, num_shards=3, **cols)
    for name, values in local.to_dict().items():
        np.testing.assert_array_equal(getattr(sharded, name), values, err_msg=name)
