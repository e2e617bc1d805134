#!/usr/bin/env bash
# Builds HERE everything scripts/gpu-check.sh runs on a GPU machine that has an NVIDIA driver but
# no cargo, no registry and no network, into one folder (the "bundle"), plus a compressed copy of
# it to carry there.
#
# Usage:
#   scripts/gpu-build.sh [--out DIR] [--with-cuda-libs]       (default DIR: dist/gpu)
#
# What it builds: a release `cuda` build for compute capability 9.0 (H100/H200) of
#   bin/g2po            the CLI (`g2po train --device cuda`)
#   tests/cuda_gpu      the GPU test executables (libtest harness; run them directly)
#   tests/cuda_nvrtc
#   bench/gpu           the figures program (benchmarks/gpu.rs)
# and writes manifest.tsv (kind, name, path, bytes), needed-libs.txt (the shared libraries each
# executable needs, from readelf) and build-info.txt (commit, features, toolchain) beside them.
# The executables are found from cargo's `--message-format=json` artifacts, not guessed.
# The CUDA kernels of kernels/*.cu are compiled into the executables (include_str!) and compiled
# by NVRTC on the device; candle's own kernels are PTX/cubin for sm_90 inside the executables.
#
# Runtime libraries: a `cuda` executable needs libcuda.so.1 (the driver's; never carried) and
# libcudart.so.13, libnvrtc.so.13 (+ libnvrtc-builtins), libcublas.so.13 (+ libcublasLt),
# libcurand.so.10. Together those are ~800 MB, far over what one device call carries (64 MiB), so
# by default only libcudart (0.7 MB) goes into lib/ and gpu-check.sh takes the rest from the
# device's own CUDA 13 (the PyPI wheels in its Python, or /usr/local/cuda), checking with ldd
# that every library resolves before running anything. --with-cuda-libs copies all of them from
# the pinned wheels into lib/ instead (for a driver-only machine reached some other way).
#
# Output: DIR/ and DIR.tar.xz (what to carry). Progress and sizes go to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

out=dist/gpu
with_libs=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift ;;
    --with-cuda-libs) with_libs=1 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "gpu-build: unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

eval "$(scripts/cuda-toolchain.sh)"
# candle's kernels for sm_90 only: Hopper (H100, H200) is what the device machines have, and one
# architecture keeps nvcc's share of the build to one pass per kernel file.
export CUDA_COMPUTE_CAP=90

log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "gpu-build: cargo build --release --features cuda (candle's CUDA kernels make a cold build slow)" >&2
cargo build --release --features cuda --message-format=json-render-diagnostics \
  --bin g2po --test cuda_gpu --test cuda_nvrtc --bench gpu > "$log"

rm -rf "$out"
mkdir -p "$out/bin" "$out/tests" "$out/bench" "$out/lib"
# Each compiler-artifact message with an executable: target kind and name, and the path.
python3 - "$log" > "$out/.artifacts" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        t = m["target"]
        print(f'{t["kind"][0]}\t{t["name"]}\t{m["executable"]}')
PY
printf 'kind\tname\tpath\tbytes\n' > "$out/manifest.tsv"
: > "$out/needed-libs.txt"
while IFS=$'\t' read -r kind name path; do
  case "$kind" in
    bin) dir=bin ;;
    test) dir=tests ;;
    bench) dir=bench ;;
    *) continue ;;
  esac
  cp "$path" "$out/$dir/$name"
  # Symbols stay (panic messages and backtraces name functions); debug info is not built.
  strip --strip-debug "$out/$dir/$name"
  printf '%s\t%s\t%s\t%s\n' "$kind" "$name" "$dir/$name" "$(stat -c %s "$out/$dir/$name")" >> "$out/manifest.tsv"
  { echo "$dir/$name:"; readelf -d "$out/$dir/$name" | awk '/NEEDED/ { gsub(/[\[\]]/, "", $5); print "  " $5 }'; } \
    >> "$out/needed-libs.txt"
done < "$out/.artifacts"
rm "$out/.artifacts"
for want in bin/g2po tests/cuda_gpu tests/cuda_nvrtc bench/gpu; do
  [ -x "$out/$want" ] || { echo "gpu-build: cargo produced no $want" >&2; exit 1; }
done

cu="$CUDA_ROOT/lib"
copy_lib() { cp -L "$cu/$1" "$out/lib/$1"; }
copy_lib libcudart.so.13
if [ "$with_libs" = 1 ]; then
  for l in libnvrtc.so.13 libnvrtc-builtins.so.13.0 libcublas.so.13 libcublasLt.so.13 libcurand.so.10; do
    copy_lib "$l"
  done
fi

{
  echo "commit: $(git rev-parse HEAD)$(git diff --quiet HEAD -- . ':!dist' || echo ' (with uncommitted changes)')"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(ldd --version | head -1)"
  echo "features: cuda; profile: release; CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"
  echo "toolchain: $(rustc --version); $(nvcc --version | tail -2 | head -1)"
  echo "lib/: $(cd "$out/lib" && ls | tr '\n' ' ')"
  echo "max GLIBC symbol version needed: $(objdump -T "$out"/bin/* "$out"/tests/* "$out"/bench/* \
    | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)"
} > "$out/build-info.txt"

tar -C "$(dirname "$out")" -cJf "$out.tar.xz" "$(basename "$out")"
echo "gpu-build: $out is $(du -sh "$out" | cut -f1), $out.tar.xz is $(du -sh "$out.tar.xz" | cut -f1)" >&2
cat "$out/manifest.tsv" >&2
