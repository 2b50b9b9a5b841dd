#!/usr/bin/env bash
# Install (idempotent), lint, and run the whole test suite, slow end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# The HTML report's browser check needs Debian's chromium + chromedriver (skipped without them,
# except in CI, where it fails): install them when we can.
if ! command -v chromedriver >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "test: installing chromium and chromium-driver (apt)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
.venv/bin/python -m ruff check .
.venv/bin/python -m ruff format --check .
# one pytest-xdist worker per core, 4 at most (`-n 0` after it: one process); the slowest
# tests are listed at the end
.venv/bin/python -m pytest -n auto --maxprocesses 4 --durations=15 "$@"
