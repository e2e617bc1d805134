#!/usr/bin/env python3
"""Generates tests/data/difflib_observations.json for tests/similarity.rs.

Run with CPython 3.11 (`python3 tests/data/make_difflib_fixtures.py`); the output
is deterministic (seeded). It holds:

- "pairs": ~100 realistic ALFWorld-like observation pairs (~270 characters, so
  difflib's autojunk rule is active) with small edits, and
  `difflib.SequenceMatcher(None, a, b).ratio()` for each;
- "clusters": lists of observations with the cluster ids that GiGPO's greedy
  similarity grouping assigns (re-implemented below, as in verl-agent: a text
  joins the first cluster whose first member `rep` has
  `SequenceMatcher(None, text, rep).ratio() >= threshold`).
"""

import difflib
import json
import random
import sys
from pathlib import Path

RNG = random.Random(20261123)

ROOM_OBJECTS = [
    "cabinet", "countertop", "drawer", "fridge", "garbagecan", "microwave", "shelf",
    "sinkbasin", "stoveburner", "toaster", "coffeemachine", "diningtable", "sidetable",
]
TASKS = [
    "put a clean apple in fridge.", "heat some egg and put it in countertop.",
    "put two cellphone in sofa.", "examine the book with the desklamp.",
    "cool some lettuce and put it in diningtable.", "put a hot potato in garbagecan.",
]
ITEMS = ["apple", "egg", "lettuce", "potato", "mug", "knife", "spatula", "bread", "tomato", "cup"]


def observation(rng):
    objs = rng.sample(ROOM_OBJECTS, rng.randint(7, 10))
    parts = [f"a {o} {rng.randint(1, 4)}" for o in objs]
    listing = ", ".join(parts[:-1]) + ", and " + parts[-1]
    text = (
        "You are in the middle of a room. Looking quickly around you, you see "
        f"{listing}. Your task is to: {rng.choice(TASKS)}"
    )
    return text


def edit(text, rng):
    """A small, realistic edit: a changed number, an extra sentence, a removed
    item, a replaced word, or a few character typos."""
    kind = rng.randrange(5)
    if kind == 0:
        digits = [i for i, c in enumerate(text) if c.isdigit()]
        i = rng.choice(digits)
        return text[:i] + str((int(text[i]) % 4) + 1) + text[i + 1:]
    if kind == 1:
        item = rng.choice(ITEMS)
        place = rng.choice(ROOM_OBJECTS)
        extra = f"You pick up the {item} {rng.randint(1, 3)} from the {place} {rng.randint(1, 4)}. "
        return extra + text
    if kind == 2:
        start = text.find(", a ", rng.randrange(len(text) // 2))
        if start < 0:
            return text + " Nothing happens."
        end = text.find(",", start + 1)
        return text[:start] + text[end:] if end > 0 else text
    if kind == 3:
        words = text.split(" ")
        i = rng.randrange(len(words))
        words[i] = rng.choice(ITEMS + ROOM_OBJECTS)
        return " ".join(words)
    chars = list(text)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(chars))
        chars[i] = rng.choice("abcdefghijklmnopqrstuvwxyz ,.")
    return "".join(chars)


def ratio(a, b):
    return difflib.SequenceMatcher(None, a, b).ratio()


def greedy_clusters(texts, threshold):
    reps = []
    ids = []
    for text in texts:
        for c, rep in enumerate(reps):
            if ratio(text, rep) >= threshold:
                ids.append(c)
                break
        else:
            ids.append(len(reps))
            reps.append(text)
    return ids


def main():
    pairs = []
    for _ in range(100):
        a = observation(RNG)
        b = a
        for _ in range(RNG.randint(1, 3)):
            b = edit(b, RNG)
        if RNG.random() < 0.5:
            a, b = b, a
        pairs.append({"a": a, "b": b, "ratio": ratio(a, b)})
    # A few unrelated pairs, so low ratios are covered too.
    for _ in range(8):
        a, b = observation(RNG), observation(RNG)
        pairs.append({"a": a, "b": b, "ratio": ratio(a, b)})

    clusters = []
    for threshold in (0.8, 0.9, 0.95, 0.98):
        for _ in range(3):
            bases = [observation(RNG) for _ in range(RNG.randint(2, 4))]
            texts = []
            for _ in range(12):
                t = RNG.choice(bases)
                for _ in range(RNG.randint(0, 2)):
                    t = edit(t, RNG)
                texts.append(t)
            clusters.append({"threshold": threshold, "texts": texts, "ids": greedy_clusters(texts, threshold)})

    out = {
        "generator": f"CPython {sys.version.split()[0]} difflib.SequenceMatcher(None, a, b).ratio(); "
        "tests/data/make_difflib_fixtures.py",
        "pairs": pairs,
        "clusters": clusters,
    }
    path = Path(__file__).with_name("difflib_observations.json")
    path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    lens = [len(p["a"]) for p in pairs]
    print(f"{len(pairs)} pairs (len {min(lens)}..{max(lens)}), {len(clusters)} cluster cases -> {path}")


if __name__ == "__main__":
    main()
