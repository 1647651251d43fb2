#!/usr/bin/env bash
# One entry point for a fresh clone: sets up (or reuses) .venv, then runs the demo or the tests.
#   bash scripts/dev.sh demo [DOMAIN] [args...]   end-to-end pipeline (default domain: unimal)
#   bash scripts/dev.sh test [pytest args...]     ruff (lint, import order, complexity), then the default test suite
#   bash scripts/dev.sh setup                     only the environment
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for cand in python3.11 python3 python; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      PYTHON=$cand; break
    fi
  done
fi
[ -n "$PYTHON" ] || { echo "error: kdistill needs Python >= 3.11 on PATH (or set PYTHON=...)." >&2; exit 2; }

setup() {
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  local pip=".venv/bin/python -m pip"
  # numpy first: torch imported without numpy warns ("Failed to initialize NumPy") during set-up.
  if ! .venv/bin/python -c 'import numpy' >/dev/null 2>&1; then
    $pip install --disable-pip-version-check -q "numpy>=1.26" 2>&1 | grep -v '^WARNING: Location' || true
  fi
  # The CPU wheel of torch (2.13.0+cpu): PyPI's plain torch==2.13.0 is a multi-GB CUDA build. A local wheel or
  # index that has the CPU build is used first; otherwise it comes from PyTorch's CPU index.
  if ! .venv/bin/python -c 'import torch' >/dev/null 2>&1; then
    $pip install --disable-pip-version-check -q "torch==2.13.0+cpu" 2>&1 | grep -v '^WARNING: Location' || true
    .venv/bin/python -c 'import torch' >/dev/null 2>&1 || \
      $pip install --disable-pip-version-check -q --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
        2>&1 | grep -v '^WARNING: Location' || true
    .venv/bin/python -c 'import torch' || { echo "error: installing torch==2.13.0 failed." >&2; exit 2; }
  fi
  # Reinstall the project only when its metadata changed.
  local stamp=.venv/.kdistill-installed want
  want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    $pip install --disable-pip-version-check -q -e ".[dev]" 2>&1 | grep -v '^WARNING: Location' || true
    .venv/bin/python -c 'import kdistill' || { echo "error: installing kdistill failed." >&2; exit 2; }
    echo "$want" > "$stamp"
  fi
}

# The robots: an explicit KDISTILL_UNIMAL_DIR wins; a checkout beside shared/ uses it.
if [ -z "${KDISTILL_UNIMAL_DIR:-}" ] && [ -d ../shared/unimal ]; then
  export KDISTILL_UNIMAL_DIR="$(cd ../shared/unimal && pwd)"
fi

cmd=${1:-help}; shift || true
case "$cmd" in
  setup) setup ;;
  test)
    setup
    .venv/bin/ruff check . || { echo "error: ruff found problems (see above); fix them or run .venv/bin/ruff check --fix ." >&2; exit 1; }
    exec .venv/bin/python -m pytest "$@" ;;
  demo)
    setup
    domain=${1:-unimal}; shift || true
    exec .venv/bin/kdistill demo "$domain" "$@" ;;
  *)
    sed -n '2,6p' "$0"; exit 2 ;;
esac
