#!/usr/bin/env bash
# Set up HKD Studio on a Debian machine with Python 3.11: system packages, a
# virtual environment in .venv with pinned packages, and hkd installed editable.
#   scripts/setup.sh          # for the app
#   scripts/setup.sh --test   # also the browser used by the end-to-end tests
# Safe to re-run: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
with_tests=0
[[ "${1:-}" == "--test" ]] && with_tests=1

# opencv-doc: real footage (vtest.avi) and photos SynthPed draws on;
# chromium: the real browser of the end-to-end tests.
packages=(opencv-doc)
[[ $with_tests == 1 ]] && packages+=(chromium)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  sudo=""
  [[ $(id -u) != 0 ]] && sudo=sudo
  echo "setup: installing system packages: ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.hkd-requirements
want=$(cat requirements.txt constraints.txt pyproject.toml | sha256sum | cut -c1-16)
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "setup: installing Python packages (first run takes a few minutes)"
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt -c constraints.txt
  .venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
echo "setup: ready (.venv)"
