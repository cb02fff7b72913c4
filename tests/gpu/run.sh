#!/usr/bin/env bash
# On a machine with a GPU and its own torch: build lunakit with its CUDA kernels, run every
# CUDA test (tests/pipeline/test_ops.py cuda cases, compared with scipy/numpy and the CPU ops, and
# tests/gpu/, fast mode's bf16 against exact mode included) and the GPU benchmarks (kernels; the
# whole pipeline in exact and fast mode). Budget: under 10 minutes on one H100/H200.
#
# Usage: bash tests/gpu/run.sh [OUT_DIR]     (env: PYTHON, default python3 -- the one with torch;
#        CUDA_HOME, default /usr/local/cuda; ARCH, default: the GPU's compute capability, e.g. 9.0)
# Writes build.log, pytest.log, bench_kernels.json and bench_gpu_pipeline.json into OUT_DIR
# (default build/gpu-report).
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
REPORT=${1:-build/gpu-report}
mkdir -p "$REPORT"
start=$(date +%s)
say() { echo "gpu/run.sh [$(($(date +%s) - start))s] $*"; }

"$PYTHON" - <<'EOF' || { echo "gpu/run.sh: needs $PYTHON with torch and a visible CUDA GPU" >&2; exit 2; }
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
assert torch.cuda.is_available(), "no GPU visible to torch"
print("gpu", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
EOF
if [ -z "${ARCH:-}" ]; then
  ARCH=$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")
fi
CMAKE_ARCH=${ARCH/./}

# nvrtc and some headers may live only in the pip CUDA packages next to torch (as here, see
# docs/design.md, "Building against torch"): point CMake at them when the toolkit lacks them.
SITE=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
extra=()
if ! ls "$CUDA_HOME"/lib64/libnvrtc.so* >/dev/null 2>&1; then
  nvrtc=$(ls "$SITE"/nvidia/cu13/lib/libnvrtc.so.* "$SITE"/nvidia/cuda_nvrtc/lib/libnvrtc.so.* 2>/dev/null | head -1)
  [ -n "$nvrtc" ] && extra+=(-C "cmake.define.CUDA_nvrtc_LIBRARY=$nvrtc")
fi
if [ ! -f "$CUDA_HOME/include/cusparse.h" ] && [ -d "$SITE/nvidia/cu13/include" ]; then
  extra+=(-C "cmake.define.CMAKE_CXX_FLAGS=-isystem $SITE/nvidia/cu13/include"
          -C "cmake.define.CMAKE_CUDA_FLAGS=-isystem $SITE/nvidia/cu13/include")
fi

say "building lunakit with CUDA (sm_$CMAKE_ARCH) against this torch"
export PATH="$CUDA_HOME/bin:$PATH" CUDACXX="$CUDA_HOME/bin/nvcc" CMAKE_BUILD_PARALLEL_LEVEL=${JOBS:-$(nproc)}
# --no-deps: pyproject pins the CPU torch of the dev machines; this one keeps its own.
if ! "$PYTHON" -m pip install -q --no-build-isolation --no-deps -e . \
    -C build-dir=build/gpu \
    -C cmake.define.LUNAKIT_CUDA=ON \
    -C cmake.define.LUNAKIT_BUILD_TESTS=OFF \
    -C cmake.define.TORCH_CUDA_ARCH_LIST="$ARCH" \
    -C cmake.define.CMAKE_CUDA_ARCHITECTURES="$CMAKE_ARCH" \
    -C cmake.define.CMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc" \
    "${extra[@]}" >"$REPORT/build.log" 2>&1; then
  tail -60 "$REPORT/build.log"
  echo "gpu/run.sh: build FAILED (log: $REPORT/build.log)" >&2
  exit 1
fi
"$PYTHON" -c "import lunakit._core as c; assert c.built_with_cuda(), 'lunakit built without CUDA'; print('lunakit', c.__version__, 'with CUDA')" || exit 1

say "CUDA tests"
status=0
"$PYTHON" -m pytest -q -p no:cacheprovider -k "cuda or gpu" tests/pipeline/test_ops.py tests/gpu 2>&1 | tee "$REPORT/pytest.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

say "benchmark (GPU; baselines on this machine's CPU)"
if timeout 240 "$PYTHON" benchmarks/bench_kernels.py --device cuda --repeat 5 >"$REPORT/bench_kernels.json" 2>"$REPORT/bench_kernels.err"; then
  cat "$REPORT/bench_kernels.json"
else
  cat "$REPORT/bench_kernels.err"
  echo "gpu/run.sh: benchmark FAILED" >&2
  status=1
fi
say "pipeline on the GPU: exact and fast mode, a life-size phantom, the demo bundle (CPU baseline)"
if timeout 300 "$PYTHON" benchmarks/bench_gpu_pipeline.py --device cuda --repeat 3 >"$REPORT/bench_gpu_pipeline.json" 2>"$REPORT/bench_gpu_pipeline.err"; then
  cat "$REPORT/bench_gpu_pipeline.json"
else
  cat "$REPORT/bench_gpu_pipeline.json" "$REPORT/bench_gpu_pipeline.err"
  echo "gpu/run.sh: pipeline benchmark FAILED" >&2
  status=1
fi
say "done, status $status"
exit $status
