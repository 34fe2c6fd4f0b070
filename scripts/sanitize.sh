#!/usr/bin/env bash
# Runs the C ABI test (fd_test_abi, GPU cases included) and
# tests/gpu/sanitize_driver.py (every kernel path: contiguous vectorised and
# element-load kernels, the wide kernel, split + merge, batch-invariant, paged,
# fp8, the extensions, an out-of-pool page id, merge_states) under
# compute-sanitizer memcheck, racecheck, initcheck and synccheck. Prints one
# line per tool and program with its error count; fails unless every one
# reports zero errors (a tool that refuses to run is a failure and its log says
# why). Needs a GPU, torch with CUDA (the driver's device memory) and a build
# with the tests (configured here when missing).
#
# Environment:
#   FD_BUILD_DIR       build directory (default: build; configured for sm_90a
#                      with the tests when it has no CMakeCache.txt)
#   FD_OUT_DIR         logs go to $FD_OUT_DIR/sanitize/ (OUT is used when it is
#                      not set; else $FD_BUILD_DIR/sanitize/)
#   FD_SANITIZE_TOOLS  default "memcheck racecheck initcheck synccheck"
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD=${FD_BUILD_DIR:-build}
case "$BUILD" in /*) ;; *) BUILD=$ROOT/$BUILD;; esac
OUT_BASE=${FD_OUT_DIR:-${OUT:-}}
LOGS=${OUT_BASE:+$OUT_BASE/sanitize}
LOGS=${LOGS:-$BUILD/sanitize}
TOOLS=${FD_SANITIZE_TOOLS:-memcheck racecheck initcheck synccheck}
mkdir -p "$LOGS"

CS=$(command -v compute-sanitizer || true)
for c in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
  [ -z "$CS" ] && [ -x "$c" ] && CS=$c
done
if [ -z "$CS" ]; then echo "sanitize: compute-sanitizer not found (part of the CUDA toolkit)" >&2; exit 1; fi

if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD" -DCMAKE_CUDA_ARCHITECTURES=90a -DFD_BUILD_TESTS=ON || exit 1
fi
cmake --build "$BUILD" -j"$(nproc)" || exit 1
TEST_BIN=$(find "$BUILD" -name fd_test_abi -type f -perm -u+x | head -1)
[ -n "$TEST_BIN" ] || { echo "sanitize: fd_test_abi not built in $BUILD (configure with -DFD_BUILD_TESTS=ON)" >&2; exit 1; }
export FLASHDECODING_LIBRARY="$BUILD/libflashdecoding.so"
export PYTHONPATH="$ROOT/python:$ROOT/tests/gpu${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

FAILED=0
run_one() {  # run_one <tool> <label> <env...> -- <command...>
  local tool=$1 label=$2; shift 2
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  local log="$LOGS/$tool.$label.log"
  local extra=()
  [ "$tool" = racecheck ] && extra+=(--racecheck-report all)
  env "${envs[@]}" "$CS" --tool "$tool" --error-exitcode 1 --print-limit 100 \
      --log-file "$log.tool" "${extra[@]}" "$@" > "$log" 2>&1
  local rc=$?
  cat "$log.tool" >> "$log" 2>/dev/null; rm -f "$log.tool"
  local errors
  errors=$(sed -n 's/.*ERROR SUMMARY: \([0-9][0-9]*\) error.*/\1/p' "$log" | tail -1)
  local hazards
  hazards=$(sed -n 's/.*RACECHECK SUMMARY: \([0-9][0-9]*\) hazard.*/\1/p' "$log" | tail -1)
  # racecheck prints no ERROR SUMMARY; its summary line counts errors itself.
  [ -z "$errors" ] && errors=$(sed -n 's/.*RACECHECK SUMMARY: .*(\([0-9][0-9]*\) error.*/\1/p' "$log" | tail -1)
  local verdict=ok
  if [ "$rc" != 0 ] || [ -z "$errors" ] || [ "$errors" != 0 ] || { [ -n "$hazards" ] && [ "$hazards" != 0 ]; }; then
    verdict=FAIL; FAILED=1
  fi
  printf 'sanitize: %-10s %-12s errors=%s%s exit=%s %s  (%s)\n' "$tool" "$label" "${errors:-?}" \
    "${hazards:+ hazards=$hazards}" "$rc" "$verdict" "$log"
  if [ "$verdict" = FAIL ]; then grep -m 20 -E "=========|Error|error|FAIL|WRONG" "$log" | head -20; fi
}

for tool in $TOOLS; do
  # FD_REQUIRE_GPU: the C test must run its GPU cases, not skip them;
  # FD_TEST_QUICK: without its caches over 8192 keys (slow under the tools).
  run_one "$tool" fd_test_abi FD_REQUIRE_GPU=1 FD_TEST_QUICK=1 -- "$TEST_BIN"
  # Without PyTorch's caching allocator every tensor is its own allocation, so
  # memcheck sees a read past a pool (an out-of-pool page id) as out of bounds.
  run_one "$tool" driver PYTORCH_NO_CUDA_MEMORY_CACHING=1 -- "$PY" tests/gpu/sanitize_driver.py
done
if [ "$FAILED" != 0 ]; then echo "sanitize: FAILED (logs in $LOGS)"; exit 1; fi
echo "sanitize: OK: every tool reports zero errors (logs in $LOGS)"
