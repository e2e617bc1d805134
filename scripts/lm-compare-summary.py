#!/usr/bin/env python3
"""Summary of the runs of scripts/lm-compare.sh: markdown tables on stdout.

Usage: python3 scripts/lm-compare-summary.py OUT_DIR

Reads OUT_DIR/{estimator}-{curriculum}-s{seed}.jsonl (one line per iteration, as
`g2po train --log` writes them). Per (estimator, curriculum), over seeds (mean and
sample sd): the rollouts' success rate (sampled at the training temperature, before
that iteration's update) in the first iteration, the first four, and the last four;
the first iteration whose rollouts all succeeded; the first iteration after whose
update the greedy evaluation (length-normalised rule, horizon 8 for every run, so
comparable across curricula) succeeded; the greedy evaluation before training and
after the last update; the mean
episode length of the last iteration; the median seconds per iteration. Then the
mean rollout success per iteration. Standard library only.
"""

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def mean_sd(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    m = statistics.fmean(xs)
    return f"{m:.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{m:.2f}"


def main(out: Path) -> None:
    runs = defaultdict(dict)
    for f in sorted(out.glob("*.jsonl")):
        m = re.fullmatch(r"(.+)-(fixed|curr)-s(\d+)\.jsonl", f.name)
        if not m:
            continue
        lines = [json.loads(l) for l in f.read_text().splitlines() if l.strip()]
        if lines:
            runs[(m[1], m[2])][int(m[3])] = lines
    if not runs:
        sys.exit(f"no run logs in {out}")
    print("| estimator | horizon | seeds | iterations | rollout success: it. 1 | it. 1-4 | last 4 "
          "| first all-success it. | first greedy success it. | greedy before | greedy after | last mean length | s / iteration |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    curves = {}
    for (est, cur), seeds in sorted(runs.items()):
        its = {len(v) for v in seeds.values()}
        succ = {s: [x["train_success"] for x in v] for s, v in seeds.items()}
        first_all = [next((i + 1 for i, x in enumerate(c) if x >= 1.0), None) for c in succ.values()]
        greedy = {s: [x["eval_success"] for x in v] for s, v in seeds.items()}
        first_greedy = [next((i + 1 for i, x in enumerate(c) if x >= 1.0), None) for c in greedy.values()]
        walls = []
        for v in seeds.values():
            w = [x["wall_s"] for x in v]
            walls += [b - a for a, b in zip([0.0] + w, w)]
        horizon = "fixed 10" if cur == "fixed" else "7, 8, 10 (4 it. each)"
        never = sum(f is None for f in first_all)
        first = mean_sd(first_all) + (f" ({never} never)" if never else "")
        never_g = sum(f is None for f in first_greedy)
        first_g = mean_sd(first_greedy) + (f" ({never_g} never)" if never_g else "")
        print(f"| {est} | {horizon} | {len(seeds)} | {'/'.join(map(str, sorted(its)))} "
              f"| {mean_sd([c[0] for c in succ.values()])} "
              f"| {mean_sd([statistics.fmean(c[:4]) for c in succ.values()])} "
              f"| {mean_sd([statistics.fmean(c[-4:]) for c in succ.values()])} | {first} | {first_g} "
              f"| {mean_sd([v[0]['lm_profile']['eval_before'] for v in seeds.values()])} "
              f"| {mean_sd([v[-1]['eval_success'] for v in seeds.values()])} "
              f"| {mean_sd([v[-1]['mean_length'] for v in seeds.values()])} "
              f"| {statistics.median(walls):.1f} |")
        n = min(its)
        curves[(est, cur)] = [statistics.fmean(c[i] for c in succ.values()) for i in range(n)]
    n = max(len(c) for c in curves.values())
    print()
    print("| estimator | horizon | " + " | ".join(str(i + 1) for i in range(n)) + " |")
    print("|---|---|" + "---|" * n)
    for (est, cur), c in sorted(curves.items()):
        print(f"| {est} | {cur} | " + " | ".join(f"{x:.2f}" for x in c) + " |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
