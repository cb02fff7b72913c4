#!/usr/bin/env bash
# The whole test suite: sets up if needed, then pytest and the C++ tests (ctest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q tests "$@"
PATH="$PWD/.venv/bin:$PATH" ctest --test-dir build/py --output-on-failure -j2
