#!/usr/bin/env bash
# The whole check on a GPU machine: builds for sm_90a (tests on), then runs the
# C ABI test (ctest, GPU cases included), the correctness grid, the Python tests,
# the sanitizers (full mode), the benchmark and, when asked, a bit-for-bit
# comparison with another build. GPU tests may not pass by skipping: it sets
# FD_REQUIRE_GPU=1, so a missing device, torch or CuPy fails the step that
# needs it. Each step logs to <out>/<step>.log; a summary table comes last and
# the exit status is non-zero when any step failed.
#
#   usage: scripts/gpu_check.sh [--out DIR] [--quick|--full] [--steps "LIST"] [-- bench args...]
#          (the old form "scripts/gpu_check.sh quick|full [bench args...]" works too)
#   steps: build ctest grid pytest sanitize bench compare
#          quick (the default) runs the grid and the bench in their quick modes and
#          leaves the sanitizers out; full runs everything in full.
#   env:   FD_OUT_DIR        output folder (default build/gpu_check; --out wins; OUT is
#                            used when neither is set)
#          FD_BUILD_DIR      build directory (default build-gpu-check)
#          FD_CMAKE_ARGS     extra cmake arguments for the build
#          FD_CHECK_STEPS    the steps to run (as --steps)
#          FD_COMPARE_WITH   a git revision or a path to a libflashdecoding.so: the
#                            compare step builds that revision (git archive, same
#                            architecture) and runs tests/gpu/compare_builds.py OLD NEW
#          FD_ALLOW_SKIP     skips the Python tests may keep (see tests/python/conftest.py)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"

mode=quick
out=${FD_OUT_DIR:-${OUT:-$root/build/gpu_check}}
steps=${FD_CHECK_STEPS:-}
bench_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    quick|--quick) mode=quick; shift;;
    full|--full) mode=full; shift;;
    --out) out=$2; shift 2;;
    --out=*) out=${1#--out=}; shift;;
    --steps) steps=$2; shift 2;;
    --steps=*) steps=${1#--steps=}; shift;;
    -h|--help) sed -n '2,23p' "$0"; exit 0;;
    --) shift; bench_args+=("$@"); break;;
    *) bench_args+=("$1"); shift;;
  esac
done
all_steps="build ctest grid pytest sanitize bench compare"
[ -n "$steps" ] || steps=$all_steps
for s in $steps; do
  case " $all_steps " in *" $s "*) ;; *) echo "gpu_check: unknown step '$s' (steps: $all_steps)" >&2; exit 2;; esac
done
mkdir -p "$out" || { echo "gpu_check: cannot create $out" >&2; exit 2; }
out=$(cd "$out" && pwd)
for s in $all_steps; do rm -f "$out/$s.log"; done   # no stale log from an earlier run
rm -f "$out/summary.txt"
build=${FD_BUILD_DIR:-build-gpu-check}
case "$build" in /*) ;; *) build=$root/$build;; esac
lib=$build/libflashdecoding.so

export PYTHONUNBUFFERED=1 FD_REQUIRE_GPU=1 FLASHDECODING_LIBRARY=$lib
export PYTHONPATH=$root/python:$root/tests/gpu${PYTHONPATH:+:$PYTHONPATH}
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then commit="$commit+changes"; fi
export FD_COMMIT=${FD_COMMIT:-$commit}

declare -A result
failed=()
selected() { case " $steps " in *" $1 "*) return 0;; *) return 1;; esac; }
# run_step <name> <command...>: runs it with its output in <out>/<name>.log.
run_step() {
  local name=$1; shift
  if ! selected "$name"; then result[$name]="skipped (not in the steps)"; return 0; fi
  local t0=$SECONDS rc=0
  echo "=== $name: $*"
  "$@" > "$out/$name.log" 2>&1 || rc=$?
  if [ "$rc" = 0 ]; then
    result[$name]="ok ($((SECONDS - t0)) s)"
  else
    result[$name]="FAILED (exit $rc, $((SECONDS - t0)) s; log: $out/$name.log)"
    failed+=("$name")
  fi
  tail -n 25 "$out/$name.log"
  return "$rc"
}
# A step that cannot run because one it needs failed is a failure too.
not_run() {  # not_run <name> <why>
  if selected "$1"; then result[$1]="FAILED (not run: $2)"; failed+=("$1"); else result[$1]="skipped (not in the steps)"; fi
}
skip_step() { result[$1]="skipped ($2)"; }

{
  echo "commit:  $FD_COMMIT"
  echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "device:  $(nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader 2>&1 | head -1)"
  else
    echo "device:  unknown (nvidia-smi not found)"
  fi
} | tee "$out/device.txt"

cmake_build() {  # cmake_build <source dir> <build dir> <FD_BUILD_TESTS: ON|OFF>
  local gen=()
  command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
  # shellcheck disable=SC2086
  cmake -S "$1" -B "$2" "${gen[@]}" -DCMAKE_CUDA_ARCHITECTURES=90a -DFD_BUILD_TESTS="$3" \
      ${FD_CMAKE_ARGS:-} &&
    cmake --build "$2" -j"$(nproc 2>/dev/null || echo 8)"
}

have_lib=0
if selected build; then
  run_step build cmake_build "$root" "$build" ON && have_lib=1
else
  skip_step build "not in the steps"
  [ -f "$lib" ] && have_lib=1
fi
[ "$have_lib" = 1 ] && [ ! -f "$lib" ] && have_lib=0
why="the build failed or $lib is missing"

if [ "$have_lib" = 1 ]; then
  if [ -f "$build/CTestTestfile.cmake" ]; then
    run_step ctest ctest --test-dir "$build" --output-on-failure -V
  else
    not_run ctest "$build/CTestTestfile.cmake is missing (configure with -DFD_BUILD_TESTS=ON)"
  fi
  grid_args=(--json "$out/grid.json"); [ "$mode" = quick ] && grid_args=(--quick "${grid_args[@]}")
  run_step grid python3 tests/gpu/grid_check.py "${grid_args[@]}"
  run_step pytest python3 -m pytest -q -rs -p no:cacheprovider tests/python
  if [ "$mode" = full ]; then
    run_step sanitize env FD_BUILD_DIR="$build" FD_OUT_DIR="$out" bash scripts/sanitize.sh
  elif selected sanitize; then
    skip_step sanitize "quick mode; scripts/gpu_check.sh --full runs it"
  else
    skip_step sanitize "not in the steps"
  fi
  bench_flags=(--json "$out/bench.json" --png "$out/bench.png" --no-progress)
  [ "$mode" = quick ] && bench_flags=(--quick "${bench_flags[@]}")
  run_step bench python3 -m flashdecoding.bench "${bench_flags[@]}" "${bench_args[@]}"
  if [ -z "${FD_COMPARE_WITH:-}" ]; then
    skip_step compare "FD_COMPARE_WITH is not set"
  elif selected compare; then
    compare_builds() {
      local old=$FD_COMPARE_WITH
      if [ ! -f "$old" ]; then
        local src=$out/compare-src
        rm -rf "$src" && mkdir -p "$src" || return 1
        echo "building $FD_COMPARE_WITH ($(git rev-parse --short "$FD_COMPARE_WITH^{commit}" 2>&1)) in $src"
        git archive --format=tar "$FD_COMPARE_WITH" | tar -x -C "$src" || return 1
        cmake_build "$src" "$src/build" OFF || return 1
        old=$src/build/libflashdecoding.so
      fi
      python3 tests/gpu/compare_builds.py "$old" "$lib"
    }
    run_step compare compare_builds
  else
    skip_step compare "not in the steps"
  fi
else
  for s in ctest grid pytest bench; do not_run "$s" "$why"; done
  if [ "$mode" = full ]; then not_run sanitize "$why"; else skip_step sanitize "quick mode"; fi
  if [ -n "${FD_COMPARE_WITH:-}" ]; then not_run compare "$why"; else skip_step compare "FD_COMPARE_WITH is not set"; fi
fi

{
  echo
  if [ -f "$out/grid.log" ]; then grep -h -E "passed|failed" "$out/grid.log" | tail -n 2; fi
  if [ -f "$out/pytest.log" ]; then
    sed -n '/= suites =/,/short test summary/p' "$out/pytest.log" | grep -v "short test summary"
    tail -n 1 "$out/pytest.log"
  fi
  echo "== summary ($FD_COMMIT, $mode; logs in $out)"
  sed -n 's/^device: *//p' "$out/device.txt"
  for s in $all_steps; do printf '%-9s %s\n' "$s" "${result[$s]:-skipped}"; done
  if [ ${#failed[@]} -gt 0 ]; then
    echo "gpu_check: FAILED: ${failed[*]}"
  else
    echo "gpu_check: OK: every step that ran passed"
  fi
} | tee "$out/summary.txt"
[ ${#failed[@]} -eq 0 ]
