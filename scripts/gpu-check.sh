#!/usr/bin/env bash
# Runs on the GPU machine, from the bundle that scripts/gpu-build.sh made here (no cargo, no
# registry, no network there), every GPU check and figure in one call of at most --budget
# seconds (default 480), each part under its own timeout so that one hang cannot eat the rest:
#
#   preflight  the bundle, the loader path (every shared library must resolve), nvidia-smi
#   device     name, compute capability, rated and measured copy bandwidth   (bench/gpu device)
#   tests      every GPU test executable, with G2PO_REQUIRE_GPU=1 on a GPU   (tests/*)
#   loss       fused GRPO loss fwd+bwd at 16M tokens vs unfused candle ops   (bench/gpu loss)
#   stages     G2PO stages on the GPU vs the CPU engine at 1M and 10M rows   (bench/gpu stages)
#   train      `g2po train --device cuda` beside the same run on the CPU (same seed)
#   lora       one LoRA GRPO step of `--policy smollm2` on the GPU, when the binary has it
#
# Usage:
#   scripts/gpu-check.sh [--bundle DIR] [--only PART,...] [--budget S] [--limit PART=S]...
#                        [--rehearse-with-stub DIR] OUTDIR
#
# OUTDIR receives figures.md (status and figures, ready for docs/benchmarks.md), figures.jsonl
# (one JSON object per figure), parts.log (every command's output), train-cpu.jsonl and
# train-cuda.jsonl (the training logs); figures.md is printed at the end.
#
# Without a GPU every part reports "skipped: no GPU (...)" and the script exits 0; with
# G2PO_REQUIRE_GPU=1 it fails at once instead. On a GPU machine run it with G2PO_REQUIRE_GPU=1 so
# that nothing can pass by skipping. Exit status: 0 when no part failed or timed out.
#
# --rehearse-with-stub DIR (for rehearsing on a machine without a GPU only): puts the link-time
# stub libcuda of scripts/cuda-toolchain.sh (DIR = .cuda/stubs) on the loader path so that the
# executables start, and runs every part anyway: each must then report that it skipped.
set -uo pipefail

bundle=dist/gpu
only=all
budget=480
stub=""
out=""
limit_overrides=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bundle) bundle="$2"; shift ;;
    --only) only="$2"; shift ;;
    --budget) budget="$2"; shift ;;
    --rehearse-with-stub) stub="$2"; shift ;;
    --limit) limit_overrides+=("$2"); shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    -*) echo "gpu-check: unknown option $1" >&2; exit 2 ;;
    *) [ -z "$out" ] || { echo "gpu-check: one OUTDIR only" >&2; exit 2; }; out="$1" ;;
  esac
  shift
done
[ -n "$out" ] || { echo "gpu-check: usage: scripts/gpu-check.sh [options] OUTDIR" >&2; exit 2; }
mkdir -p "$out" || exit 2
out="$(cd "$out" && pwd)"
bundle="$(cd "$bundle" 2>/dev/null && pwd)" || { echo "gpu-check: no bundle folder (run scripts/gpu-build.sh here first)" >&2; exit 2; }
require="${G2PO_REQUIRE_GPU:-0}"
export G2PO_REQUIRE_GPU="$require"
log="$out/parts.log"
figs="$out/figures.jsonl"
rows="$out/.rows.md"
: > "$log"; : > "$figs"; : > "$rows"
rm -f "$out/train-cpu.jsonl" "$out/train-cuda.jsonl" "$out/lora.jsonl"
start=$(date +%s)
statuses=()
failed=0

# Per-part limits in seconds; a part never runs past what is left of the budget.
# train's limit is per run (cpu, then cuda).
declare -A limit=([preflight]=20 [device]=20 [tests]=100 [loss]=60 [stages]=110 [train]=90 [lora]=60)
parts_all=(device tests loss stages train lora)
for o in "${limit_overrides[@]}"; do
  p="${o%%=*}"; v="${o#*=}"
  [[ -n "${limit[$p]:-}" && "$v" =~ ^[0-9]+$ ]] || { echo "gpu-check: bad --limit $o (PART=SECONDS)" >&2; exit 2; }
  limit[$p]=$v
done

note() { echo "$*" | tee -a "$log"; }
wanted() { [ "$only" = all ] || [[ ",$only," == *",$1,"* ]]; }
# record PART STATUS DETAIL: STATUS is PASS, SKIP, N/A, FAIL or TIMEOUT.
record() {
  statuses+=("| $1 | $2 | $3 |")
  case "$2" in FAIL|TIMEOUT) failed=1 ;; esac
  note "== $1: $2${3:+: $3}"
}
# limited PART STDOUT STDERR CMD...: CMD under the part's limit, cut to what is left of the
# budget. Returns CMD's status; 124/137 = timed out, 125 = no time left.
limited() {
  local part="$1" so="$2" se="$3"; shift 3
  local left=$(( budget - ($(date +%s) - start) - 5 ))
  local t=${limit[$part]}
  (( left >= 5 )) || return 125
  (( t > left )) && t=$left
  note "\$ $* (limit ${t}s)"
  timeout --kill-after=5 "$t" "$@" > "$so" 2> "$se"
}
timed_out() { [ "$1" = 124 ] || [ "$1" = 137 ]; }

finish() {
  local md="$out/figures.md"
  {
    echo "# GPU check: ${device_name:-no GPU}"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ); bundle: $(sed -n 's/^commit: //p' "$bundle/build-info.txt" 2>/dev/null);" \
      "G2PO_REQUIRE_GPU=$require; $(( $(date +%s) - start )) s of a ${budget} s budget"
    echo
    echo "| part | status | detail |"
    echo "|---|---|---|"
    printf '%s\n' "${statuses[@]}"
    if [ -s "$rows" ]; then
      echo
      echo "| figure | values |"
      echo "|---|---|"
      cat "$rows"
    fi
    [ -f "$out/.train.md" ] && { echo; cat "$out/.train.md"; }
  } > "$md"
  rm -f "$rows" "$out/.train.md"
  echo
  cat "$md"
  exit "$failed"
}

# ---------------------------------------------------------------------------------------------
# preflight
# ---------------------------------------------------------------------------------------------
manifest="$bundle/manifest.tsv"
[ -f "$manifest" ] || { record preflight FAIL "no manifest.tsv in $bundle"; finish; }
exe() { awk -F'\t' -v k="$1" -v n="$2" '$1 == k && $2 == n { print $3 }' "$manifest"; }
g2po="$bundle/$(exe bin g2po)"
figures="$bundle/$(exe bench gpu)"
mapfile -t test_exes < <(awk -F'\t' '$1 == "test" { print $3 }' "$manifest")
for f in "$g2po" "$figures"; do
  [ -x "$f" ] || { record preflight FAIL "missing executable $f"; finish; }
done
note "bundle: $bundle"; cat "$bundle/build-info.txt" >> "$log" 2>/dev/null

# The loader path: the bundle's lib/, then $G2PO_CUDA_LIB_PATH, then CUDA 13 libraries already on
# the machine (the nvidia-* wheels of its Python, a CUDA install), then the driver's folder.
libdirs=("$bundle/lib")
[ -n "${G2PO_CUDA_LIB_PATH:-}" ] && IFS=: read -r -a extra <<< "$G2PO_CUDA_LIB_PATH" && libdirs+=("${extra[@]}")
for py in python3 /opt/torch/.venv/bin/python3; do
  purelib=$(timeout 10 "$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null) || continue
  for d in "$purelib"/nvidia/cu13/lib "$purelib"/nvidia/*/lib; do [ -d "$d" ] && libdirs+=("$d"); done
done
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64 \
         /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
  [ -d "$d" ] && libdirs+=("$d")
done
[ -n "$stub" ] && libdirs+=("$(cd "$stub" && pwd)")
ldpath=$(printf '%s\n' "${libdirs[@]}" | awk '!seen[$0]++' | paste -sd: -)
export LD_LIBRARY_PATH="$ldpath${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
note "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

missing=$(for f in "$g2po" "$figures" "${test_exes[@]/#/$bundle/}"; do ldd "$f" 2>&1 | awk '/not found/ { print $1 }'; done | sort -u | paste -sd' ' -)
{ echo "ldd $g2po:"; ldd "$g2po"; } >> "$log" 2>&1
gpu_reason=""
if [[ " $missing " == *" libcuda.so.1 "* ]]; then
  gpu_reason="no NVIDIA driver (libcuda.so.1 not found)"
elif ! smi=$(timeout "${limit[preflight]}" nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap \
               --format=csv,noheader 2>&1); then
  gpu_reason="nvidia-smi failed: $(echo "$smi" | head -1)"
  smi=""
fi
others=$(echo "$missing" | tr ' ' '\n' | grep -v '^libcuda.so.1$' | paste -sd' ' -)

if [ -n "$gpu_reason" ]; then
  if [ "$require" = 1 ]; then
    record preflight FAIL "G2PO_REQUIRE_GPU=1 but no GPU: $gpu_reason"
    finish
  fi
  if [ -z "$stub" ]; then
    record preflight SKIP "no GPU: $gpu_reason"
    for p in "${parts_all[@]}"; do wanted "$p" && record "$p" SKIP "skipped: no GPU ($gpu_reason)"; done
    finish
  fi
  note "rehearsal: no GPU ($gpu_reason); running every part with the stub libcuda from $stub"
fi
if [ -n "$others" ]; then
  record preflight FAIL "libraries not found: $others (put their folder on G2PO_CUDA_LIB_PATH)"
  finish
fi
device_name=$(echo "${smi:-}" | head -1 | cut -d, -f1)
if [ -n "$gpu_reason" ]; then
  record preflight PASS "rehearsal without a GPU ($gpu_reason); every library resolves"
else
  record preflight PASS "$(echo "$smi" | head -1); every library resolves"
fi

tmp_out=$(mktemp); tmp_err=$(mktemp)
trap 'rm -f "$tmp_out" "$tmp_err"' EXIT
# keep OUT ERR: both into the log, in order.
keep() { cat "$1" "$2" >> "$log"; }
# status_of RC: the common TIMEOUT / out-of-budget cases, or empty.
status_of() {
  if timed_out "$1"; then echo TIMEOUT; elif [ "$1" = 125 ]; then echo BUDGET; fi
}

# figures_part PART: bench/gpu PART; JSON lines to figures.jsonl, table rows to figures.md.
figures_part() {
  local part="$1" rc st
  limited "$part" "$tmp_out" "$tmp_err" "$figures" "$part"; rc=$?
  keep "$tmp_out" "$tmp_err"
  cat "$tmp_out" >> "$figs"
  grep '^| ' "$tmp_err" >> "$rows"
  st=$(status_of "$rc")
  if [ "$st" = TIMEOUT ]; then record "$part" TIMEOUT "after ${limit[$part]} s"
  elif [ "$st" = BUDGET ]; then record "$part" SKIP "skipped: the budget is spent"
  elif [ "$rc" != 0 ]; then record "$part" FAIL "exit $rc: $(grep -v '^| ' "$tmp_err" | tail -1)"
  elif grep -q '"skipped"' "$tmp_out"; then
    # The reason is a JSON string: take it whole, escaped quotes included, then unescape them.
    record "$part" SKIP "skipped: $(sed -n 's/.*"skipped": *"\(\([^"\\]\|\\.\)*\)".*/\1/p' "$tmp_out" | head -1 | sed 's/\\"/"/g')"
  else record "$part" PASS "$(grep -c '^{' "$tmp_out") figure(s)"
  fi
}

# tests_part: every test executable of the manifest, all tests, G2PO_REQUIRE_GPU as given.
tests_part() {
  local rc st t name passed=0 skipped=() fails=() timeouts=()
  for t in "${test_exes[@]}"; do
    name=$(basename "$t")
    # --show-output: passing tests' captured output too, where a skip would say SKIPPED.
    limited tests "$tmp_out" "$tmp_err" "$bundle/$t" --show-output; rc=$?
    keep "$tmp_out" "$tmp_err"
    st=$(status_of "$rc")
    passed=$(( passed + $(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i + 1) ~ /^passed/) n += $i } END { print n + 0 }' "$tmp_out") ))
    if [ -n "$st" ]; then timeouts+=("$name ($st)")
    elif [ "$rc" != 0 ]; then fails+=("$name: $(grep -h ' \.\.\. FAILED$' "$tmp_out" | sed 's/^test //; s/ \.\.\. FAILED$//' | paste -sd, -)")
    elif grep -q 'SKIPPED' "$tmp_out" "$tmp_err"; then skipped+=("$name")
    fi
  done
  if [ ${#timeouts[@]} -gt 0 ]; then record tests TIMEOUT "${timeouts[*]}; ${fails[*]}"
  elif [ ${#fails[@]} -gt 0 ]; then record tests FAIL "${fails[*]}"
  elif [ ${#skipped[@]} -gt 0 ]; then record tests SKIP "skipped: no GPU (tests that skipped in: ${skipped[*]}; $passed passed)"
  else record tests PASS "$passed tests passed in ${#test_exes[@]} executables, none skipped"
  fi
}

# train_summary LOG: first iteration s, median later iteration s, last-5 train success, last eval.
train_summary() {
  awk '
    { it = $0; sub(/.*"iteration":/, "", it); sub(/[,}].*/, "", it)
      w = $0; sub(/.*"wall_s":/, "", w); sub(/[,}].*/, "", w)
      s = $0; sub(/.*"train_success":/, "", s); sub(/[,}].*/, "", s)
      e = $0; if (e ~ /"eval_success":[0-9.eE+-]+/) { sub(/.*"eval_success":/, "", e); sub(/[,}].*/, "", e); ev = e }
      n++; dt[n] = w - prev; prev = w; succ[n] = s }
    END {
      if (n == 0) { print "no iterations logged"; exit }
      m = 0; for (i = 2; i <= n; i++) d[++m] = dt[i]
      for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (d[j] < d[i]) { x = d[i]; d[i] = d[j]; d[j] = x }
      med = (m == 0) ? dt[1] : (m % 2 ? d[(m + 1) / 2] : (d[m / 2] + d[m / 2 + 1]) / 2)
      k = 0; t = 0; for (i = (n > 5 ? n - 4 : 1); i <= n; i++) { t += succ[i]; k++ }
      f = 0; h = 0; for (i = 1; i <= n && i <= 5; i++) { f += succ[i]; h++ }
      printf "%d iterations; first %.3f s, median of the rest %.4f s; train success first %d %.3f, last %d %.3f; last eval success %s\n", n, dt[1], med, h, f / h, k, t / k, (ev == "" ? "none" : ev)
    }' "$1"
}

# train_part: the same short run on the CPU and on CUDA device 0, same seed, one after the other
# (so that neither competes with the other for the CPU).
train_part() {
  # Lost robot at temperature 2 learns within these 30 iterations (training success from 0 to
  # about 0.5 on the CPU here), so the two runs can be compared on learning as well as on time.
  local args=(train --env lost-robot --temperature 2 --iterations 30 --seed 7)
  local rc st dev cpu_line cuda_line
  for dev in cpu cuda; do
    limited train "$tmp_out" "$tmp_err" "$g2po" "${args[@]}" --device "$dev" --log "$out/train-$dev.jsonl"; rc=$?
    keep "$tmp_out" "$tmp_err"
    st=$(status_of "$rc")
    if [ -n "$st" ]; then record train TIMEOUT "--device $dev ($st)"; return; fi
    if [ "$rc" != 0 ]; then
      if [ "$dev" = cuda ] && [ -z "$device_name" ] && grep -q 'device unavailable' "$tmp_err"; then
        record train SKIP "skipped: no GPU ($(grep -m1 'device unavailable' "$tmp_err"))"
      else
        record train FAIL "--device $dev exit $rc: $(tail -1 "$tmp_err")"
      fi
      return
    fi
  done
  cpu_line=$(train_summary "$out/train-cpu.jsonl")
  cuda_line=$(train_summary "$out/train-cuda.jsonl")
  echo "| g2po train --env lost-robot --temperature 2 --iterations 30 --seed 7, cpu | $cpu_line |" >> "$rows"
  echo "| g2po train, same, cuda | $cuda_line |" >> "$rows"
  {
    echo "| iteration | cpu s | cuda s | cpu train success | cuda train success |"
    echo "|---|---|---|---|---|"
    paste -d'\t' "$out/train-cpu.jsonl" "$out/train-cuda.jsonl" | awk -F'\t' '
      function field(line, key,   v) { v = line; if (v !~ "\"" key "\":") return "-"; sub(".*\"" key "\":", "", v); sub(/[,}].*/, "", v); return v }
      { a = field($1, "wall_s"); b = field($2, "wall_s")
        printf "| %s | %.3f | %.3f | %s | %s |\n", field($1, "iteration"), a - pa, b - pb, field($1, "train_success"), field($2, "train_success")
        pa = a; pb = b }'
  } > "$out/.train.md"
  record train PASS "cpu: $cpu_line; cuda: $cuda_line"
}

# lora_part: only when the binary has the SmolLM2 policy and its weights are on this machine.
lora_part() {
  local rc st gguf
  if ! "$g2po" train --help 2>/dev/null | grep -q 'smollm2'; then
    record lora N/A "this g2po has no --policy smollm2 (the LM policy had not landed when the bundle was built)"
    return
  fi
  gguf="${G2PO_SMOLLM2_GGUF:-$bundle/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
  if [ ! -f "$gguf" ]; then
    record lora N/A "no SmolLM2 GGUF at $gguf (98 MB: over one call's 64 MiB carry with the bundle; set G2PO_SMOLLM2_GGUF)"
    return
  fi
  export G2PO_SMOLLM2_GGUF="$gguf"
  limited lora "$tmp_out" "$tmp_err" "$g2po" train --policy smollm2 --env household-small \
    --iterations 1 --tasks 1 --rollouts 4 --eval-tasks 0 --seed 7 --device cuda --log "$out/lora.jsonl"; rc=$?
  keep "$tmp_out" "$tmp_err"
  st=$(status_of "$rc")
  if [ -n "$st" ]; then record lora TIMEOUT "$st"
  elif [ "$rc" != 0 ]; then record lora FAIL "exit $rc: $(tail -1 "$tmp_err")"
  else
    echo "| LoRA GRPO step, SmolLM2-135M, cuda | $(train_summary "$out/lora.jsonl") |" >> "$rows"
    record lora PASS "$(train_summary "$out/lora.jsonl")"
  fi
}

for p in "${parts_all[@]}"; do
  wanted "$p" || continue
  case "$p" in
    device|loss|stages) figures_part "$p" ;;
    tests) tests_part ;;
    train) train_part ;;
    lora) lora_part ;;
  esac
done
finish
