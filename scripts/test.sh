#!/usr/bin/env bash
# Set everything up (idempotent) and run the whole test suite: unit tests + notebooks (nbval).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup-env.sh"
bash "$root/scripts/setup-browser.sh"  # Debian's headless Chromium for tests/test_browser.py
cd "$root"
export TRANSFORMERS_VERBOSITY="${TRANSFORMERS_VERBOSITY:-error}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"  # the tests never download anything
# One process per core, each with one torch thread (two 2-thread processes on 2 cores spin against each
# other); a file's tests, and a notebook's cells, stay together in one process (--dist loadfile).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$root/.venv/bin/python" -m pytest tests notebooks --nbval-lax -p no:cacheprovider \
  -n "${SDCOURSE_TEST_WORKERS:-auto}" --dist loadfile "$@"
