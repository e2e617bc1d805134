#!/usr/bin/env python3
"""Generates tests/data/difflib_bounds.json for tests/similarity.rs.

Run with CPython 3.11 (`python3 tests/data/make_difflib_bounds.py`) after
make_difflib_fixtures.py; the output is deterministic. It holds:

- "pairs": every pair of difflib_ratios.json and difflib_observations.json with
  `quick_ratio()` and `real_quick_ratio()` (the upper bounds of `ratio()` that
  g2po's clustering prunes with) next to `ratio()`;
- "large_cluster": one clustering case of 700 observations (several of the
  Rust implementation's blocks of 256 texts, with exact repeats), with the ids
  GiGPO's greedy grouping assigns at thresholds 0.9 and 0.95.
"""

import difflib
import json
import random
import sys
from pathlib import Path

import make_difflib_fixtures as fx

HERE = Path(__file__).parent


def main():
    pairs = []
    for name, key in (("difflib_ratios.json", "cases"), ("difflib_observations.json", "pairs")):
        for case in json.loads((HERE / name).read_text())[key]:
            m = difflib.SequenceMatcher(None, case["a"], case["b"])
            pairs.append({
                "a": case["a"], "b": case["b"], "ratio": m.ratio(),
                "quick_ratio": m.quick_ratio(), "real_quick_ratio": m.real_quick_ratio(),
            })

    rng = random.Random(20261201)
    bases = [fx.observation(rng) for _ in range(60)]
    texts = []
    for _ in range(700):
        if texts and rng.random() < 0.2:
            texts.append(rng.choice(texts))  # an exact repeat, as rollouts revisit states
            continue
        t = rng.choice(bases)
        for _ in range(rng.randint(0, 3)):
            t = fx.edit(t, rng)
        texts.append(t)
    large = {
        "texts": texts,
        "ids": {str(t): fx.greedy_clusters(texts, t) for t in (0.9, 0.95)},
    }
    out = {
        "generator": f"CPython {sys.version.split()[0]} difflib; tests/data/make_difflib_bounds.py",
        "pairs": pairs,
        "large_cluster": large,
    }
    path = HERE / "difflib_bounds.json"
    path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    print(f"{len(pairs)} pairs, large cluster of {len(texts)} texts -> {path}")


if __name__ == "__main__":
    main()
