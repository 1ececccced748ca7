#!/usr/bin/env bash
# Install Debian's Chromium and ChromeDriver (/usr/bin/chromium, /usr/bin/chromedriver) for
# tests/test_browser.py when they are missing and this machine can: root with apt-get.
# Never fails. When it cannot install them it says why, and writes the reason to
# .venv/.sdcourse-no-browser, which the browser test gives as its reason to skip.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
note="$root/.venv/.sdcourse-no-browser"
rm -f "$note"
[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && exit 0

packages=(chromium chromium-driver)
why=""
if ! command -v apt-get >/dev/null 2>&1; then
  why="no apt-get here: install Chromium as /usr/bin/chromium by hand"
elif [ "$(id -u)" != 0 ]; then
  why="not root: run 'sudo apt-get install ${packages[*]}'"
else
  echo "sdcourse: installing Debian's ${packages[*]} for the browser test"
  export DEBIAN_FRONTEND=noninteractive
  log="$(mktemp)"
  # Without package lists (a fresh machine) the first try fails; update them and try again.
  if ! { apt-get install -y -qq "${packages[@]}" || { apt-get update -qq && apt-get install -y -qq "${packages[@]}"; }; } >"$log" 2>&1; then
    why="'apt-get install ${packages[*]}' failed: $(tail -n 3 "$log" | tr '\n' ' ')"
  fi
  rm -f "$log"
fi
if [ -n "$why" ]; then
  echo "sdcourse: $why (tests/test_browser.py will skip)"
  mkdir -p "$(dirname "$note")" && echo "$why" > "$note"
fi
exit 0
