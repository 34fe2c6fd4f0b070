#!/usr/bin/env bash
# Runs the C host test (fd_test_abi) and tests/gpu/sanitize_driver.py (the
# default merge path, and with FD_TUNE_CLUSTER=1 the opt-in cluster path) under
# compute-sanitizer memcheck, racecheck, initcheck and synccheck. Prints one line
# per tool and program with its error count; fails unless every one reports zero
# errors (a tool that refuses to run, e.g. on thread block clusters, is a failure
# and its log says why). Needs a GPU.
#
# Environment:
#   FD_BUILD_DIR  build directory (default: build; reused when it exists)
#   OUT           when set, logs go to $OUT/sanitize/ (else $FD_BUILD_DIR/sanitize/)
#   FD_SANITIZE_TOOLS  default "memcheck racecheck initcheck synccheck"
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD=${FD_BUILD_DIR:-build}
LOGS=${OUT:+$OUT/sanitize}
LOGS=${LOGS:-$BUILD/sanitize}
TOOLS=${FD_SANITIZE_TOOLS:-memcheck racecheck initcheck synccheck}
mkdir -p "$LOGS"

CS=$(command -v compute-sanitizer || true)
for c in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
  [ -z "$CS" ] && [ -x "$c" ] && CS=$c
done
if [ -z "$CS" ]; then echo "sanitize: compute-sanitizer not found" >&2; exit 1; fi

if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD" -DCMAKE_CUDA_ARCHITECTURES=90a -DFD_BUILD_TESTS=ON || exit 1
fi
cmake --build "$BUILD" -j"$(nproc)" || exit 1
TEST_BIN=$(find "$BUILD" -name fd_test_abi -type f -perm -u+x | head -1)
[ -n "$TEST_BIN" ] || { echo "sanitize: fd_test_abi not built in $BUILD" >&2; exit 1; }
export FLASHDECODING_LIBRARY="$ROOT/$BUILD/libflashdecoding.so"
export PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
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
  printf 'sanitize: %-10s %-28s errors=%s%s exit=%s %s  (%s)\n' "$tool" "$label" "${errors:-?}" \
    "${hazards:+ hazards=$hazards}" "$rc" "$verdict" "$log"
  if [ "$verdict" = FAIL ]; then grep -m 20 -E "=========|Error|error" "$log" | head -20; fi
}

for tool in $TOOLS; do
  run_one "$tool" fd_test_abi FD_NONE=1 -- "$TEST_BIN"
  run_one "$tool" driver_merge FD_NONE=1 -- "$PY" tests/gpu/sanitize_driver.py
  run_one "$tool" driver_cluster FD_TUNE_CLUSTER=1 -- "$PY" tests/gpu/sanitize_driver.py
done
if [ "$FAILED" != 0 ]; then echo "sanitize: FAILED (logs in $LOGS)"; exit 1; fi
echo "sanitize: OK: every tool reports zero errors (logs in $LOGS)"
