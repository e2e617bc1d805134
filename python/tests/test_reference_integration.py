"""The real reference functions (verl-agent's GiGPO and verl core_algos, the
G2PO fork's G2PO) side by side with the compat ones on the same batches.

Runs when checkouts are given: ``VERL_AGENT_DIR`` (langfengQ/verl-agent) and
``G2PO_DIR`` (Nala-YN/G2PO); skips with a message otherwise. The reference
files are loaded from those directories at test time; none of their code is
part of this repository. verl's package imports heavy dependencies
(tensordict, transformers); where they are missing, a placeholder ``verl``
module provides the one name the estimator files import (``DataProto``, used
only in annotations), and REINFORCE++-baseline (which needs verl's
torch_functional) is skipped.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from g2po_rs import compat  # noqa: E402
from g2po_rs.compat import core_algos, core_g2po, core_gigpo  # noqa: E402

from reference_batches import adjust_and_balance, data_proto, obj, rollout, tokens  # noqa: E402

VERL_AGENT_DIR = os.environ.get("VERL_AGENT_DIR")
G2PO_DIR = os.environ.get("G2PO_DIR")


def _load(name: str, path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _verl_placeholder(root: pathlib.Path) -> bool:
    """Makes ``from verl import DataProto`` work. True if verl's torch_functional is real."""
    sys.path.insert(0, str(root))
    try:
        import verl  # noqa: F401
        import verl.utils.torch_functional  # noqa: F401

        return True
    except Exception:
        for key in [k for k in sys.modules if k == "verl" or k.startswith("verl.")]:
            del sys.modules[key]
        sys.path.remove(str(root))
    verl = types.ModuleType("verl")
    verl.DataProto = type("DataProto", (), {})
    utils = types.ModuleType("verl.utils")
    tf = types.ModuleType("verl.utils.torch_functional")
    verl.utils = utils
    utils.torch_functional = tf
    sys.modules.update({"verl": verl, "verl.utils": utils, "verl.utils.torch_functional": tf})
    return False


@pytest.fixture(scope="module")
def refs():
    if not VERL_AGENT_DIR or not G2PO_DIR:
        pytest.skip(
            "reference checkouts not given: set VERL_AGENT_DIR (langfengQ/verl-agent) and G2PO_DIR "
            "(Nala-YN/G2PO) to run the reference functions side by side with g2po_rs.compat"
        )
    va, g2 = pathlib.Path(VERL_AGENT_DIR), pathlib.Path(G2PO_DIR)
    real_tf = _verl_placeholder(va)
    return types.SimpleNamespace(
        gigpo=_load("ref_core_gigpo", va / "gigpo" / "core_gigpo.py"),
        g2po=_load("ref_core_g2po", g2 / "g2po" / "core_g2po.py"),
        algos=_load("ref_core_algos", va / "verl" / "trainer" / "ppo" / "core_algos.py"),
        real_torch_functional=real_tf,
    )


def _rows(x) -> np.ndarray:
    return x.numpy()[:, 0] if x.ndim == 2 else x.numpy()


def _max_diff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    return float(np.max(np.where(both_nan, 0.0, np.abs(a - b)), initial=0.0))


def _same_tokens(ours, theirs, atol: float, what: str):
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, what
    a, b = ours.numpy(), theirs.numpy()
    assert np.array_equal(np.isnan(a), np.isnan(b)), f"{what}: NaN rows differ"
    d = _max_diff(a, b)
    print(f"{what}: max |ours - reference| = {d:.3g}")
    assert d <= atol, f"{what}: max difference {d}"


SEEDS = [0, 1, 2]
NUMERICS = ["g2po", "reference"]


@pytest.mark.parametrize("numerics", NUMERICS)
@pytest.mark.parametrize("mode", ["mean_std_norm", "mean_norm"])
@pytest.mark.parametrize("seed", SEEDS)
def test_gigpo_side_by_side(refs, seed, mode, numerics, capsys):
    compat.configure(numerics=numerics)
    rng = np.random.default_rng(seed)
    b = rollout(rng, groups=5, n=4, max_steps=7)
    L, gamma, p = 6, 0.95, 0.1
    dp = data_proto(b, L)
    theirs = refs.gigpo.compute_step_discounted_returns(dp, gamma)
    ours = core_gigpo.compute_step_discounted_returns(dp, gamma)
    if numerics == "reference":
        assert torch.equal(ours, theirs), "phase one is bit-identical under reference numerics"
    else:
        assert _max_diff(ours, theirs) <= 1e-6
    invalid = torch.tensor(1.0 - b.valid.astype(np.float32))
    theirs = theirs - p * invalid
    ours = ours - p * invalid
    tlr, mask = tokens(b, rng, L, p, strided=seed == 1)
    order = adjust_and_balance(rng, len(b.uid), extra=7)
    args = dict(
        token_level_rewards=tlr[order],
        response_mask=mask[order] if seed != 1 else mask[order][:, :],
        anchor_obs=b.anchor_obs[order],
        index=b.uid[order],
        traj_index=b.traj_uid[order],
        epsilon=1e-6,
        step_advantage_w=1.0,
        mode=mode,
    )
    ref_scores, _ = refs.gigpo.compute_gigpo_outcome_advantage(step_rewards=theirs[order], **args)
    our_scores, again = compat.core_gigpo.compute_gigpo_outcome_advantage(step_rewards=ours[order], **args)
    assert our_scores is again
    _same_tokens(our_scores, ref_scores, 2e-6 if numerics == "reference" else 1e-4, f"gigpo {mode} {numerics}")


@pytest.mark.parametrize("numerics", NUMERICS)
@pytest.mark.parametrize("mode", ["mean_std_norm", "mean_norm"])
@pytest.mark.parametrize("seed", SEEDS)
def test_g2po_side_by_side(refs, seed, mode, numerics):
    compat.configure(numerics=numerics)
    rng = np.random.default_rng(100 + seed)
    b = rollout(rng, groups=5, n=4, max_steps=7, singleton_group=True)
    L = 6
    dp = data_proto(b, L)
    v_ref, g_ref, n_ref = refs.g2po.compute_group_aggregation_values(dp)
    v, g, n = core_g2po.compute_group_aggregation_values(dp)
    np.testing.assert_array_equal(g, g_ref)
    np.testing.assert_array_equal(n, n_ref)
    assert v.dtype == v_ref.dtype and g.dtype == g_ref.dtype and n.dtype == n_ref.dtype
    if numerics == "reference":
        np.testing.assert_array_equal(v, v_ref)  # bit-identical
    else:
        assert _max_diff(v, v_ref) <= 1e-6
    tlr, mask = tokens(b, rng, L, 0.1, strided=seed == 2)
    order = adjust_and_balance(rng, len(b.uid), extra=9)
    args = dict(
        token_level_rewards=tlr[order], response_mask=mask[order], index=b.uid[order],
        traj_index=b.traj_uid[order], group_idx=g_ref[order], next_group_idx=n_ref[order],
        is_action_valid=b.is_action_valid[order], epsilon=1e-6, step_advantage_w=1.0, mode=mode,
    )
    with np.errstate(invalid="ignore"), torch.no_grad():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about std of one value
            ref_scores, _ = refs.g2po.compute_g2po_outcome_advantage(step_rewards=v_ref[order], **args)
    our_scores, _ = core_g2po.compute_g2po_outcome_advantage(step_rewards=v[order], **args)
    singleton = b.uid[order] == b.uid[0]
    if mode == "mean_std_norm":
        assert torch.isnan(ref_scores[singleton]).all(), "the reference gives NaN on a uid of one row"
    if numerics == "reference" or mode == "mean_norm":
        _same_tokens(our_scores, ref_scores, 2e-6 if numerics == "reference" else 1e-4, f"g2po {mode} {numerics}")
    else:
        # The documented choice: no NaN; every other row as the reference.
        assert not torch.isnan(our_scores).any()
        _same_tokens(our_scores[~singleton], ref_scores[~singleton], 1e-4, f"g2po {mode} {numerics} (non-singleton)")


@pytest.mark.parametrize("numerics", NUMERICS)
@pytest.mark.parametrize("name", ["grpo", "grpo_dr", "grpo_traj", "rloo", "passk", "rfpp"])
def test_core_algos_side_by_side(refs, name, numerics):
    compat.configure(numerics=numerics)
    rng = np.random.default_rng(7)
    b = rollout(rng, groups=6, n=4, max_steps=5)
    tlr, mask = tokens(b, rng, 5, 0.1)
    tlr = tlr + torch.tensor(rng.normal(size=tlr.shape).astype(np.float32)) * (mask > 0)  # varied scores
    order = adjust_and_balance(rng, len(b.uid), extra=5)
    args = dict(token_level_rewards=tlr[order], response_mask=mask[order], index=b.uid[order],
                traj_index=b.traj_uid[order])
    fn = {
        "grpo": ("compute_grpo_outcome_advantage", {}),
        "grpo_dr": ("compute_grpo_outcome_advantage", {"norm_adv_by_std_in_grpo": False}),
        "grpo_traj": ("compute_grpo_outcome_advantage", {"compute_mean_std_cross_steps": False}),
        "rloo": ("compute_rloo_outcome_advantage", {}),
        "passk": ("compute_grpo_passk_outcome_advantage", {}),
        "rfpp": ("compute_reinforce_plus_plus_baseline_outcome_advantage", {}),
    }[name]
    if name == "rfpp" and not refs.real_torch_functional:
        pytest.skip("verl's torch_functional needs tensordict and transformers, not installed here")
    theirs, _ = getattr(refs.algos, fn[0])(**args, **fn[1])
    ours, again = getattr(core_algos, fn[0])(**args, **fn[1])
    assert ours is again
    _same_tokens(ours, theirs, 2e-6 if numerics == "reference" else 1e-4, f"{name} {numerics}")


def test_non_text_anchors(refs, capsys):
    """GiGPO hashes non-text anchors with to_hashable (1 == 1.0 == True, arrays by
    content); None anchors raise in GiGPO and fuse a whole uid in G2PO."""
    rng = np.random.default_rng(3)
    b = rollout(rng, groups=3, n=3, max_steps=4)
    bs = len(b.uid)
    tlr, mask = tokens(b, rng, 4, 0.1)
    steps = torch.tensor(rng.normal(size=bs).astype(np.float32))
    choices = [1, 1.0, True, 2, np.int64(2), (1, 2), np.array([1, 2])]
    anchors = obj([choices[int(i)] for i in rng.integers(0, len(choices), size=bs)])
    args = dict(token_level_rewards=tlr, step_rewards=steps, response_mask=mask, anchor_obs=anchors,
                index=b.uid, traj_index=b.traj_uid, mode="mean_std_norm")
    theirs, _ = refs.gigpo.compute_gigpo_outcome_advantage(**args)
    ours, _ = core_gigpo.compute_gigpo_outcome_advantage(**args)
    _same_tokens(ours, theirs, 1e-5, "gigpo non-text anchors")
    images = np.asarray(rng.integers(0, 2, size=(bs, 2, 2, 3)), dtype=object)
    theirs, _ = refs.gigpo.compute_gigpo_outcome_advantage(**{**args, "anchor_obs": images})
    ours, _ = core_gigpo.compute_gigpo_outcome_advantage(**{**args, "anchor_obs": images})
    _same_tokens(ours, theirs, 1e-5, "gigpo image anchors")
    with pytest.raises(TypeError):
        refs.gigpo.compute_gigpo_outcome_advantage(**{**args, "anchor_obs": obj([None] * bs)})
    with pytest.raises(TypeError) as err:
        core_gigpo.compute_gigpo_outcome_advantage(**{**args, "anchor_obs": obj([None] * bs)})
    assert err.value.argument == "anchor_obs" and err.value.row == 0
    dp = data_proto(b, 4)
    dp.non_tensor_batch["anchor_obs"] = obj([None] * bs)
    compat.configure(numerics="reference")
    for ours_, theirs_ in zip(core_g2po.compute_group_aggregation_values(dp),
                              refs.g2po.compute_group_aggregation_values(dp)):
        np.testing.assert_array_equal(ours_, theirs_)
    dp.non_tensor_batch["anchor_obs"] = images.astype(np.int64)
    with pytest.raises(TypeError):
        refs.g2po.compute_group_aggregation_values(dp)
    with pytest.raises(TypeError) as err:
        core_g2po.compute_group_aggregation_values(dp)
    assert err.value.argument == "anchor_obs" and err.value.row == 0


@pytest.mark.parametrize("threshold", [0.9, 0.97])
def test_gigpo_similarity_side_by_side(refs, threshold):
    rng = np.random.default_rng(11)
    b = rollout(rng, groups=3, n=4, max_steps=5, states=4)
    bs = len(b.uid)
    # Near-identical texts: a counter that differs between visits.
    b.anchor_obs = obj([f"{o} turn {int(rng.integers(0, 12))}" for o in b.anchor_obs])
    tlr, mask = tokens(b, rng, 4, 0.1)
    steps = torch.tensor(rng.normal(size=bs).astype(np.float32))
    args = dict(token_level_rewards=tlr, step_rewards=steps, response_mask=mask, anchor_obs=b.anchor_obs,
                index=b.uid, traj_index=b.traj_uid, mode="mean_std_norm", enable_similarity=True,
                similarity_thresh=threshold)
    theirs, _ = refs.gigpo.compute_gigpo_outcome_advantage(**args)
    ours, _ = core_gigpo.compute_gigpo_outcome_advantage(**args)
    _same_tokens(ours, theirs, 1e-5, f"gigpo similarity {threshold}")


def test_core_algos_reexports_verl(refs):
    """With verl importable, g2po_rs.compat.core_algos is verl's module with the
    grouped estimators replaced."""
    if not refs.real_torch_functional:
        pytest.skip("verl's package needs tensordict, transformers and pandas, not installed here")
    import importlib

    import verl.trainer.ppo.core_algos as verl_algos

    mod = importlib.reload(core_algos)
    assert mod.VERL_AVAILABLE
    assert mod.compute_gae_advantage_return is verl_algos.compute_gae_advantage_return
    assert mod.compute_policy_loss is verl_algos.compute_policy_loss
    assert mod.compute_grpo_outcome_advantage is not verl_algos.compute_grpo_outcome_advantage
    assert mod.compute_grpo_outcome_advantage.__module__ == "g2po_rs.compat.core_algos"
