#!/usr/bin/env bash
# Makes (or reuses) the virtual environment of the Python environment servers, OUTSIDE the
# checkout: ${XDG_CACHE_HOME:-$HOME/.cache}/g2po-ci/envs-venv. It is rebuilt only when
# requirements.txt changes (its hash is stored beside it). Prints the interpreter's path.
# Needs python3 (3.9+) and, for TextWorld-Express, a Java runtime (OpenJDK 17) on PATH.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="${XDG_CACHE_HOME:-$HOME/.cache}/g2po-ci"
venv="$root/envs-venv"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.requirements-sha256" 2>/dev/null)" = "$want" ]; then
  echo "$venv/bin/python"
  exit 0
fi
mkdir -p "$root"
rm -rf "$venv"
python3 -m venv "$venv" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
"$venv/bin/python" -c "import textworld_express, minigrid" >&2
echo "$want" > "$venv/.requirements-sha256"
echo "$venv/bin/python"
