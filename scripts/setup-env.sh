#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv with pinned versions.
# Idempotent: reinstalls only when requirements-dev.txt, constraints-dev.txt or
# pyproject.toml changed since the last successful install. Source it or run it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3}"

stamp_of() { cat "$root/requirements-dev.txt" "$root/constraints-dev.txt" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1; }

if [ ! -x "$venv/bin/python" ]; then
  echo "sdcourse: creating $venv"
  "$python" -m venv "$venv"
fi
want="$(stamp_of)"
have="$(cat "$venv/.sdcourse-stamp" 2>/dev/null || true)"
if [ "$want" != "$have" ]; then
  echo "sdcourse: installing pinned dependencies into $venv (about a minute)"
  pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
  "${pip[@]}" install --upgrade pip
  "${pip[@]}" install "torch==2.13.0"   # first, so nothing pulls a CUDA build
  "${pip[@]}" install -r "$root/requirements-dev.txt" -c "$root/constraints-dev.txt"
  "${pip[@]}" install --no-deps open-clip-torch  # only for its CLIP vocabulary file (tokenizer check)
  "${pip[@]}" install --no-deps -e "$root"
  echo "$want" > "$venv/.sdcourse-stamp"
fi
