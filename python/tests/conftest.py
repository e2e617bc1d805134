"""Shared fixtures: the conformance vectors and trainer-shaped batches.

The vectors are the repository's ``tests/data/vectors``, ``../shared/vectors``
beside the checkout, and ``$G2PO_VECTORS``, as for the Rust conformance test.
"""

from __future__ import annotations

import json
import os
import pathlib
import types

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def vector_dirs() -> list[pathlib.Path]:
    """As the Rust conformance test: the repository's copy, ../shared/vectors
    beside the checkout, and $G2PO_VECTORS (later folders win on equal names)."""
    dirs = [REPO / "tests" / "data" / "vectors", REPO.parent / "shared" / "vectors"]
    if os.environ.get("G2PO_VECTORS"):
        dirs.append(pathlib.Path(os.environ["G2PO_VECTORS"]))
    return [d for d in dirs if d.is_dir()]


def vector_files() -> list[pathlib.Path]:
    files = {p.name: p for d in vector_dirs() for p in sorted(d.glob("*.json"))}
    if not files:
        raise RuntimeError(f"no conformance vectors in {vector_dirs()} (set G2PO_VECTORS)")
    return [files[name] for name in sorted(files)]


def load_vector(path: pathlib.Path) -> dict:
    return json.loads(path.read_text())


class Trainer:
    """A vector's rows as the reference trainers hold them: torch token tensors
    (episode reward minus the invalid penalty on the last response token),
    numpy object arrays of ids, anchors, numpy-bool validity, float32 rewards."""

    def __init__(self, rows: list[dict], penalty: float):
        import torch

        self.rows = rows
        bs = len(rows)
        self.lens = np.array([r["response_len"] for r in rows], dtype=np.int64)
        L = int(self.lens.max())
        self.L = L
        tlr = torch.zeros(bs, L, dtype=torch.float32)
        mask = torch.zeros(bs, L, dtype=torch.int64)
        for i, r in enumerate(rows):
            n = r["response_len"]
            mask[i, :n] = 1
            score = torch.tensor(r["episode_reward"], dtype=torch.float32)
            if not r["is_action_valid"]:
                score -= penalty
            tlr[i, n - 1] = score
        self.token_level_rewards = tlr
        self.response_mask = mask

        def obj(values):
            a = np.empty(bs, dtype=object)
            a[:] = values
            return a

        self.uid = obj([r["group"] for r in rows])
        self.traj_uid = obj([r["traj"] for r in rows])
        self.anchor_obs = obj([r["obs"] for r in rows])
        self.is_action_valid = obj([np.bool_(r["is_action_valid"]) for r in rows])
        self.valid = np.array([r["is_action_valid"] for r in rows], dtype=bool)
        self.episode_rewards = obj([np.float32(r["episode_reward"]) for r in rows])
        self.rewards = np.array([r["reward"] for r in rows], dtype=np.float32)
        self.step = np.array([r["step"] for r in rows], dtype=np.int64)

    def data_proto(self):
        """What phase one reads (``batch.batch`` / ``batch.non_tensor_batch``)."""
        import torch

        bs = len(self.rows)
        return types.SimpleNamespace(
            batch={
                "input_ids": torch.zeros(bs, 2, dtype=torch.int64),
                "responses": torch.zeros(bs, self.L, dtype=torch.int64),
            },
            non_tensor_batch={
                "rewards": self.rewards,
                "traj_uid": self.traj_uid,
                "uid": self.uid,
                "active_masks": np.ones(bs, dtype=bool),
                "anchor_obs": self.anchor_obs,
                "episode_rewards": self.episode_rewards,
                "is_action_valid": self.is_action_valid,
            },
        )

    def take(self, order: np.ndarray) -> "Trainer":
        """The batch with rows taken in ``order`` (duplicates allowed)."""
        return Trainer([self.rows[i] for i in order], 0.0)._with_tokens(self, order)

    def _with_tokens(self, src: "Trainer", order: np.ndarray) -> "Trainer":
        self.token_level_rewards = src.token_level_rewards[order]
        self.response_mask = src.response_mask[order]
        return self


@pytest.fixture(autouse=True)
def _restore_compat_settings():
    from g2po_rs import compat

    before = compat.configure()
    yield
    compat.configure(**vars(before))
