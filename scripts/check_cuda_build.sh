#!/usr/bin/env bash
# Compile check of the CUDA kernels (cpp/src/ops/cuda/*.cu) with nvcc, without a GPU.
#
# Builds lunakit_core standalone with LUNAKIT_CUDA=ON against torch 2.14.1 (a CUDA 13.0
# build, 5.5 GB, installed from local disk into its own cached venv, ~/.cache/lunakit/venv-cuda), for
# sm_90 only. Nothing runs on a GPU here: this proves the CUDA sources compile and link.
# The workarounds are those of docs/design.md, "Building against torch", and docs/cpp.md.
#
# Usage: bash scripts/check_cuda_build.sh        (env: PYTHON=python3, CUDA_HOME=/usr/local/cuda)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
# The 5.5 GB venv lives outside the checkout so that fresh clones (CI) on one machine share it.
VENV=${LUNAKIT_CUDA_VENV:-$HOME/.cache/lunakit/venv-cuda}
mkdir -p "$(dirname "$VENV")"
BUILD=build/cuda

if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "check_cuda_build: no nvcc at $CUDA_HOME/bin/nvcc (set CUDA_HOME)" >&2
  exit 2
fi

# 1. The venv with the CUDA build of torch (reused when it already has it).
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip -q --disable-pip-version-check "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.14.1') else 1)" 2>/dev/null; then
  echo "check_cuda_build: installing torch==2.14.1 (CUDA 13.0 build) into $VENV" >&2
  pip install torch==2.14.1
fi
"$VENV/bin/python" -c "import pybind11, scikit_build_core, cmake, ninja, numpy" 2>/dev/null \
  || pip install pybind11 scikit-build-core "cmake>=3.26" ninja numpy

# 2. Where the pip CUDA libraries and headers are (nvrtc, cusparse.h live there, not in $CUDA_HOME).
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
CU13="$SITE/nvidia/cu13"
NVRTC="$CU13/lib/libnvrtc.so.13"
if [ ! -f "$NVRTC" ]; then
  echo "check_cuda_build: $NVRTC not found (torch 2.14.1's CUDA libraries missing?)" >&2
  exit 2
fi

# 3. Configure and build lunakit_core with the CUDA sources, plus luna_infer.
export PATH="$VENV/bin:$CUDA_HOME/bin:$PATH"
export CUDA_HOME CUDACXX="$CUDA_HOME/bin/nvcc"
JOBS=${JOBS:-2}
cmake -S . -B "$BUILD" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release \
  -DLUNAKIT_CUDA=ON \
  -DLUNAKIT_BUILD_TESTS=OFF \
  -DLUNAKIT_BUILD_PYTHON=OFF \
  -DPython_EXECUTABLE="$VENV/bin/python" \
  -DTORCH_CUDA_ARCH_LIST=9.0 \
  -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc" \
  -DCUDAToolkit_ROOT="$CUDA_HOME" \
  -DCUDA_nvrtc_LIBRARY="$NVRTC" \
  -DCMAKE_CXX_FLAGS="-isystem $CU13/include" \
  -DCMAKE_CUDA_FLAGS="-isystem $CU13/include" \
  >"$BUILD.configure.log" 2>&1 || { tail -40 "$BUILD.configure.log" >&2; echo "check_cuda_build: configure FAILED (full log: $BUILD.configure.log)" >&2; exit 1; }
cmake --build "$BUILD" -j "$JOBS" || { echo "check_cuda_build: build FAILED" >&2; exit 1; }

# 4. The library must carry the CUDA kernels it was asked to.
LIB="$BUILD/cpp/liblunakit_core.so"
n_cuda=$(ls cpp/src/ops/cuda/*.cu 2>/dev/null | wc -l)
if [ "$n_cuda" -gt 0 ] && ! nm -C -D "$LIB" | grep -q "cudaLaunchKernel\|__cudaRegisterFatBinary" \
   && ! objdump -h "$LIB" | grep -q "nv_fatbin"; then
  echo "check_cuda_build: $LIB carries no CUDA code" >&2
  exit 1
fi
echo "check_cuda_build: OK ($n_cuda CUDA sources compiled for sm_90 into $LIB)"
