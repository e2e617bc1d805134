#!/usr/bin/env bash
# CI for the Python package g2po_rs (called by .ci/run from the repository root).
#
# 1. A virtual environment with numpy, torch, ray, pytest, hypothesis, xxhash and
#    maturin, OUTSIDE the checkout (${XDG_CACHE_HOME:-$HOME/.cache}/g2po-ci/py-venv),
#    reused while python/requirements-ci.txt and the interpreter are unchanged
#    (torch alone is about 4 GB with its CUDA wheels, so a cold start costs minutes).
# 2. fmt and clippy of the binding crate (its own workspace, see python/Cargo.toml).
# 3. `pip install ./python` into that environment (maturin builds the abi3 wheel;
#    the Rust build cache lives beside the venv, so a warm run recompiles little).
# 4. pytest on python/tests (conformance vectors from $G2PO_VECTORS or
#    ../shared/vectors; the reference side-by-side test runs when VERL_AGENT_DIR and
#    G2PO_DIR are set, else it skips saying so).
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${XDG_CACHE_HOME:-$HOME/.cache}/g2po-ci"
venv="$cache/py-venv"
python="${PYTHON:-python3}"
stamp_want="$( (cat python/requirements-ci.txt; "$python" -c 'import sys; print(sys.version)') | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$venv/.requirements-stamp" 2>/dev/null || true)" != "$stamp_want" ]; then
  echo "-- creating $venv (requirements changed or first run)"
  rm -rf "$venv"
  mkdir -p "$cache"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -r python/requirements-ci.txt
  echo "$stamp_want" > "$venv/.requirements-stamp"
else
  echo "-- reusing $venv"
fi

export PYO3_PYTHON="$venv/bin/python"
export CARGO_TARGET_DIR="$cache/py-target"
echo "-- cargo fmt / clippy (python/)"
cargo fmt --manifest-path python/Cargo.toml -- --check
cargo clippy --manifest-path python/Cargo.toml --all-targets -- -D warnings

echo "-- pip install ./python"
PATH="$venv/bin:$PATH" "$venv/bin/pip" install -q --no-build-isolation --force-reinstall --no-deps ./python

echo "-- pytest python/tests"
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-2}"
# Run from outside python/ so that the installed package, not the source folder, is imported.
(cd python/tests && "$venv/bin/pytest" -q -p no:cacheprovider .)
