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
exec "$root/.venv/bin/python" -m pytest tests notebooks --nbval-lax -p no:cacheprovider "$@"
