#!/usr/bin/env bash
# The fast lint step (seconds): ruff's lint rules and its formatting check over the Python code
# (configured in pyproject.toml), and clang-format's check over the C++ (.clang-format).
# `.venv/bin/ruff format`, `ruff check --fix` and `.venv/bin/clang-format -i FILE` repair most of it.
set -euo pipefail
cd "$(dirname "$0")/.."
paths=(python tests benchmarks examples)
.venv/bin/ruff check "${paths[@]}"
.venv/bin/ruff format --check "${paths[@]}"
cpp_files=$(git ls-files 'cpp/*.cpp' 'cpp/*.h' 'cpp/*.cu' 'examples/*.cpp' 'examples/*.h' 2>/dev/null || find cpp examples -name '*.cpp' -o -name '*.h' -o -name '*.cu')
# shellcheck disable=SC2086
.venv/bin/clang-format --dry-run --Werror $cpp_files
