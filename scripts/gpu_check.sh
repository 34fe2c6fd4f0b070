#!/usr/bin/env bash
# One device call: build for sm_90a, run the C ABI test (GPU cases included), the
# correctness grid, the Python GPU tests and the benchmark; logs under $OUT, a
# short table last.
#   usage: scripts/gpu_check.sh [quick|full] [bench args...]
#   env:   FD_CHECK_STEPS="build ctest grid pytest bench" (subset to run)
set -uo pipefail
mode=${1:-quick}; shift || true
out=${OUT:-/tmp/fd_out}; mkdir -p "$out"
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
steps=${FD_CHECK_STEPS:-"build ctest grid grid_cluster pytest bench"}
export PYTHONUNBUFFERED=1 FLASHDECODING_LIBRARY=$root/build/libflashdecoding.so
export PYTHONPATH=$root/python:$root/tests/gpu${PYTHONPATH:+:$PYTHONPATH}
export FD_COMMIT=${FD_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
if [ -d .carry ] && ls .carry/*.whl >/dev/null 2>&1; then   # FlashInfer peer (peer-bundle.sh)
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .carry/*.whl \
    && tar xJf .carry/flashinfer.tar.xz -C /tmp/site \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site FLASHINFER_CUDA_ARCH_LIST=9.0a MAX_JOBS=16
fi
declare -A result
run_step() {  # name, command...
  local name=$1; shift
  case " $steps " in *" $name "*) ;; *) result[$name]="skipped"; return;; esac
  local t0=$SECONDS
  echo "=== $name: $*"
  if "$@" > "$out/$name.log" 2>&1; then result[$name]="ok ($((SECONDS - t0)) s)"
  else result[$name]="FAILED rc=$? ($((SECONDS - t0)) s)"; fi
  tail -n 25 "$out/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader | tee "$out/device.txt"
run_step build bash -c "cmake -S . -B build -G Ninja -DCMAKE_CUDA_ARCHITECTURES=90a -DFD_BUILD_TESTS=ON && cmake --build build -j16"
run_step ctest ctest --test-dir build --output-on-failure
grid_flag=""; [ "$mode" = quick ] && grid_flag="--quick"
run_step grid python3 tests/gpu/grid_check.py $grid_flag --json "$out/grid.json"
# The same grid through the opt-in cluster (DSMEM) reduction instead of the merge kernel.
run_step grid_cluster env FD_TUNE_CLUSTER=1 python3 tests/gpu/grid_check.py --quick
run_step pytest python3 -m pytest -q -x -p no:cacheprovider tests/python
bench_flag=""; [ "$mode" = quick ] && bench_flag="--quick"
run_step bench python3 -m flashdecoding.bench $bench_flag --json "$out/bench.json" --png "$out/bench.png" "$@"
echo
echo "== summary ($FD_COMMIT, $(cat "$out/device.txt"))"
for s in build ctest grid grid_cluster pytest bench; do printf '%-8s %s\n' "$s" "${result[$s]:-}"; done
grep -h -E "passed|failed" "$out/grid.log" 2>/dev/null | tail -n 2
[ -f "$out/bench.log" ] && grep -A 40 -E "^(shape|Shape|#)" "$out/bench.log" | tail -n 40
exit 0
