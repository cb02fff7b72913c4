#!/usr/bin/env bash
# The whole test suite: sets up if needed, lints, then pytest, the C++ tests (ctest) and a
# short run of each fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/lint.sh
.venv/bin/python -m pytest -q tests "$@"
PATH="$PWD/.venv/bin:$PATH" ctest --test-dir build/py --output-on-failure -j2
# The fuzz smoke: every libFuzzer target from its seed corpus, 30 s each (docs/fuzzing.md).
bash scripts/fuzz.sh 30
# CI has no GPU, but the CUDA kernels must compile: where nvcc exists, build them against
# torch 2.14.1 (CUDA 13.0). LUNAKIT_SKIP_CUDA_CHECK=1 skips it.
if [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ] && [ "${LUNAKIT_SKIP_CUDA_CHECK:-0}" != 1 ]; then
  bash scripts/check_cuda_build.sh
fi
