#!/usr/bin/env bash
# Set everything up (idempotent) and open the workbook (notebooks/) in JupyterLab.
# Runs offline on mini-SD by default; set SDCOURSE_MODEL=sd15 (on a GPU) for real weights.
# SDCOURSE_PORT and SDCOURSE_TOKEN choose the port and access token.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup-env.sh"
args=(--notebook-dir="$root/notebooks" --port="${SDCOURSE_PORT:-8888}")
[ -n "${SDCOURSE_TOKEN:-}" ] && args+=(--IdentityProvider.token="$SDCOURSE_TOKEN")
[ -n "${SDCOURSE_NO_BROWSER:-}" ] && args+=(--no-browser)
[ "$(id -u)" = 0 ] && args+=(--allow-root)
exec "$root/.venv/bin/jupyter" lab "${args[@]}"
