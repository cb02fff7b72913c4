#!/usr/bin/env bash
# The fast lint step (seconds): ruff's lint rules and its formatting check over the Python code
# (configured in pyproject.toml). `.venv/bin/ruff format` and `ruff check --fix` repair most of it.
set -euo pipefail
cd "$(dirname "$0")/.."
paths=(python tests benchmarks examples)
.venv/bin/ruff check "${paths[@]}"
.venv/bin/ruff format --check "${paths[@]}"
