#!/usr/bin/env bash
# The CPU training comparison of docs/lm.md: SmolLM2-135M + LoRA on the chain (n = 6),
# G2PO against GRPO and a stepwise horizon curriculum against a fixed horizon, SEEDS seeds
# each, two runs at a time (one core each; candle's pool busy-waits, so one thread per run).
#
# Usage: scripts/lm-compare.sh OUT_DIR [SEEDS]      (default 5 seeds: 20 runs, ~1.5 h on 2 cores)
# Then:  python3 scripts/lm-compare-summary.py OUT_DIR
#
# Needs the GGUF (scripts/fetch-smollm2.sh) and a release build (cargo build --release); the
# binary is copied into OUT_DIR first, so rebuilding during the runs changes nothing.
set -euo pipefail
out="${1:?usage: scripts/lm-compare.sh OUT_DIR [SEEDS]}"
seeds="${2:-5}"
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/target/release/g2po"
[ -x "$bin" ] || { echo "no release binary at $bin: run cargo build --release" >&2; exit 1; }
mkdir -p "$out"
cp "$bin" "$out/g2po"
cd "$out"
export CANDLE_NUM_THREADS=1 RAYON_NUM_THREADS=1
# One line per run: estimator, curriculum name, curriculum, seed.
: > queue.txt
for seed in $(seq 0 $((seeds - 1))); do
  for cur in "fixed fixed:10" "curr stepwise:7,8,10@4"; do
    for est in g2po grpo; do
      echo "$est $cur $seed" >> queue.txt
    done
  done
done
run_one() {
  local est=$1 cname=$2 cur=$3 seed=$4
  local name="$est-$cname-s$seed"
  ./g2po train --policy smollm2 --env chain --estimator "$est" --curriculum "$cur" \
    --iterations 16 --tasks 2 --rollouts 8 --eval-tasks 1 --eval-horizon 8 --eval-before \
    --temperature 6 --lr 5e-3 --lora-top-layers 8 --seed "$seed" --log "$name.jsonl" > "$name.out" 2>&1
}
export -f run_one
xargs -P 2 -L 1 bash -c 'run_one "$@"' _ < queue.txt
echo "done: python3 $root/scripts/lm-compare-summary.py $out"
