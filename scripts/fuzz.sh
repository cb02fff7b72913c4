#!/usr/bin/env bash
# Builds the libFuzzer targets (cpp/fuzz, clang with ASan + UBSan) in build/fuzz and runs each
# for SECONDS (default 30) from its seed corpus (cpp/fuzz/corpus/<target>). New inputs go to a
# scratch corpus under build/fuzz/work, never into the repository; a crash leaves its input
# there and fails the script. docs/fuzzing.md has the long runs.
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]     e.g. bash scripts/fuzz.sh 30 metaimage
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(metaimage dicom manifest findings)
clang=${CLANGXX:-$(command -v clang++-14 || command -v clang++)}
cmake -S . -B build/fuzz -G Ninja -DCMAKE_CXX_COMPILER="$clang" -DLUNAKIT_FUZZ=ON \
  -DLUNAKIT_BUILD_TESTS=OFF -DLUNAKIT_BUILD_PYTHON=OFF -DPython_EXECUTABLE="$PWD/.venv/bin/python" >build/fuzz-configure.log 2>&1 || { cat build/fuzz-configure.log >&2; exit 1; }
cmake --build build/fuzz --target fuzz_targets -j2 >/dev/null
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}  # torch's own allocations at exit are not ours
for target in "${targets[@]}"; do
  work=build/fuzz/work/$target
  mkdir -p "$work/corpus" "$work/crashes"
  log=$work/last-run.log
  if ! build/fuzz/cpp/fuzz/fuzz_"$target" "$work/corpus" "cpp/fuzz/corpus/$target" -max_total_time="$seconds" \
    -max_len=65536 -rss_limit_mb=4096 -timeout=20 -artifact_prefix="$work/crashes/" -print_final_stats=1 >"$log" 2>&1; then
    echo "fuzz $target: FAILED (input in $work/crashes/; log $log)" >&2
    grep -E "ERROR|SUMMARY|runtime error|Test unit written" "$log" | head -5 >&2
    exit 1
  fi
  runs=$(grep -m1 "stat::number_of_executed_units" "$log" | awk '{print $2}')
  echo "fuzz $target: ${runs:-?} executions in ${seconds} s, 0 crashes"
done
