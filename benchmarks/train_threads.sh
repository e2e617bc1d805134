#!/usr/bin/env bash
# Wall time of a small fixed `g2po train` run under several thread-pool settings, interleaved
# (one run of each setting per round, so that load changes hit every setting alike); prints the
# median of each setting and its ratio to the best. See docs/benchmarks.md ("Training threads").
#
# Usage: benchmarks/train_threads.sh [ROUNDS] [BINARY] [BASELINE_BINARY]
#   ROUNDS default 7; BINARY default target/release/g2po (build: cargo build --release --bin g2po);
#   BASELINE_BINARY (optional): another build, run with nothing set, e.g. one from before a change.
set -euo pipefail
rounds=${1:-7}
bin=${2:-target/release/g2po}
baseline=${3:-}
run=(train --env chain --iterations 15 --tasks 4 --rollouts 8 --eval-tasks 8 --seed 0)

# name|binary|environment (empty: nothing set)
settings=(
  "default (nothing set)|$bin|"
  "RAYON_NUM_THREADS=1|$bin|RAYON_NUM_THREADS=1"
  "RAYON_NUM_THREADS=2|$bin|RAYON_NUM_THREADS=2"
  "RAYON_NUM_THREADS=1 CANDLE_NUM_THREADS=1|$bin|RAYON_NUM_THREADS=1 CANDLE_NUM_THREADS=1"
  "RAYON_NUM_THREADS=2 CANDLE_NUM_THREADS=2|$bin|RAYON_NUM_THREADS=2 CANDLE_NUM_THREADS=2"
)
if [ -n "$baseline" ]; then
  settings+=("baseline binary (nothing set)|$baseline|")
fi

echo "uptime before: $(uptime)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for ((r = 0; r < rounds; r++)); do
  for s in "${settings[@]}"; do
    IFS='|' read -r name exe envs <<< "$s"
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    env -u RAYON_NUM_THREADS -u CANDLE_NUM_THREADS $envs "$exe" "${run[@]}" > /dev/null 2>&1
    end=$(date +%s.%N)
    printf '%s\t%s\n' "$name" "$(echo "$end - $start" | bc)" >> "$log"
  done
done
echo "uptime after:  $(uptime)"

python3 - "$log" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, t = line.rstrip("\n").split("\t")
    rows.setdefault(name, []).append(float(t))
best = min(statistics.median(v) for v in rows.values())
for name, v in rows.items():
    m = statistics.median(v)
    print(f"| {name} | {m:.2f} s | {m / best:.2f} | {' '.join(f'{x:.2f}' for x in v)} |")
PY
