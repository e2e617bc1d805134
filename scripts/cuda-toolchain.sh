#!/usr/bin/env bash
# Installs a pinned CUDA 13.0 toolchain from PyPI wheels into a local folder (no root, no
# system CUDA), generates a link-time stub libcuda, and prints the environment a build needs.
#
# Usage:
#   scripts/cuda-toolchain.sh [--nvrtc-only | --compile-only] [--prefix DIR]   (default DIR: ./.cuda)
#   eval "$(scripts/cuda-toolchain.sh)"                        full toolchain for `--features cuda`
#   eval "$(scripts/cuda-toolchain.sh --compile-only)"         nvcc + headers only: enough for
#                                                              `cargo check/clippy --features cuda`
#                                                              (no linking, so no cuBLAS/cuRAND/NVRTC)
#   eval "$(scripts/cuda-toolchain.sh --nvrtc-only)"           NVRTC only, for `--features nvrtc` tests
#
# Progress goes to stderr; stdout carries only `export` lines so that `eval` works.
#
# Why a stub libcuda: libcuda.so belongs to the GPU driver, not to the toolkit, and no wheel ships
# it. The `cuda` build links against it (candle's cudarc uses dynamic linking), so we generate a
# library with the right soname (libcuda.so.1) that exports every cu* entry point named in cuda.h.
# It lives in its own directory that is put on LIBRARY_PATH (link time) only: at run time the real
# driver's libcuda.so.1 must be found instead, so the stub dir is never on LD_LIBRARY_PATH.
set -euo pipefail

# CUDA 13.0 Update 1 component versions (one consistent release).
NVCC_VER=13.0.88
RUNTIME_VER=13.0.88
CCCL_VER=13.0.85
CRT_VER=13.0.88
NVVM_VER=13.0.88
CUBLAS_VER=13.0.2.14
CURAND_VER=10.4.0.35
NVRTC_VER=13.0.88

mode=full
prefix=./.cuda
while [ $# -gt 0 ]; do
  case "$1" in
    --nvrtc-only) mode=nvrtc ;;
    --compile-only) mode=compile ;;
    --prefix) prefix="$2"; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"
site="$prefix/site-packages"
cu="$site/nvidia/cu13"
stub="$prefix/stubs"

# What nvcc needs to compile candle's kernels (and what a type-check of the `cuda` feature needs).
compiler=(
  "nvidia-cuda-nvcc==$NVCC_VER"
  "nvidia-cuda-runtime==$RUNTIME_VER"
  "nvidia-cuda-cccl==$CCCL_VER"
  "nvidia-cuda-crt==$CRT_VER"
  "nvidia-nvvm==$NVVM_VER"
)
full=("nvidia-cuda-nvrtc==$NVRTC_VER" "${compiler[@]}" "nvidia-cublas==$CUBLAS_VER" "nvidia-curand==$CURAND_VER")
case "$mode" in
  nvrtc) pkgs=("nvidia-cuda-nvrtc==$NVRTC_VER") ;;
  compile) pkgs=("${compiler[@]}") ;;
  full) pkgs=("${full[@]}") ;;
esac

# --no-deps: every component is pinned above; letting pip resolve dependencies could pull a
# second, different 13.x version of a component into the same nvidia/cu13 tree.
stamp="$prefix/.installed-$mode"
want="${pkgs[*]}"
# pip --target --upgrade replaces the whole shared nvidia/ directory, so installing a subset
# into a prefix that holds the full set would delete the rest: a full install already satisfies
# --nvrtc-only and --compile-only.
full_stamp="$prefix/.installed-full"
if [ "$mode" != full ] && [ -f "$full_stamp" ] && [ "$(cat "$full_stamp")" = "${full[*]}" ]; then
  echo "cuda-toolchain: the full install in $site already has what --$mode-only needs" >&2
elif [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "cuda-toolchain: installing ${pkgs[*]} into $site" >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
    --target "$site" "${pkgs[@]}" >&2
  # The install replaced nvidia/ as a whole: whatever another mode installed there is gone.
  rm -f "$prefix"/.installed-*
  echo "$want" > "$stamp"
else
  echo "cuda-toolchain: already installed ($mode) in $site" >&2
fi

# The wheels ship versioned sonames only; a plain libX.so is what `-lX` looks for at link time.
for lib in "$cu"/lib/lib*.so.*; do
  [ -e "$lib" ] || continue
  base="${lib##*/}"; plain="${base%%.so.*}.so"
  [ -e "$cu/lib/$plain" ] || ln -s "$base" "$cu/lib/$plain"
done

if [ "$mode" != nvrtc ]; then
  chmod +x "$cu"/bin/* "$cu"/nvvm/bin/* 2>/dev/null || true
  if [ ! -f "$stub/libcuda.so" ] || [ "$cu/include/cuda.h" -nt "$stub/libcuda.so" ]; then
    mkdir -p "$stub"
    # Every cu* identifier of the driver API header, including the _v2/_ptds names that the
    # header's #defines map to; exporting a few extra names from a stub is harmless. Each
    # returns CUDA_ERROR_NO_DEVICE (100): should the stub ever be loaded at run time by
    # mistake, cuInit fails cleanly instead of pretending to be a driver.
    grep -oE '\bcu[A-Z][A-Za-z0-9_]*' "$cu/include/cuda.h" | sort -u \
      | awk '{ printf "int %s(void) { return 100; }\n", $1 }' > "$stub/libcuda_stub.c"
    gcc -shared -fPIC -o "$stub/libcuda.so.1" -Wl,-soname,libcuda.so.1 "$stub/libcuda_stub.c"
    ln -sf libcuda.so.1 "$stub/libcuda.so"
    echo "cuda-toolchain: stub libcuda with $(wc -l < "$stub/libcuda_stub.c") symbols in $stub" >&2
  fi
  cat <<ENV
export CUDA_ROOT="$cu"
export CUDA_PATH="$cu"
export CUDA_HOME="$cu"
export PATH="$cu/bin:\$PATH"
export LIBRARY_PATH="$stub:$cu/lib\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export LD_LIBRARY_PATH="$cu/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export CUDA_COMPUTE_CAP=90
ENV
else
  # cudarc (dynamic-loading) dlopen()s libnvrtc.so / libnvrtc.so.13 by bare name, so the
  # dynamic loader's search path (LD_LIBRARY_PATH) is what finds the wheel's library;
  # CUDA_PATH is not consulted at run time.
  cat <<ENV
export LD_LIBRARY_PATH="$cu/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
ENV
fi
