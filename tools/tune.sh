#!/usr/bin/env bash
# Launch-planner tuning sweep on a GPU (measurement only; the library's
# defaults come from what this shows, recorded in docs/RESULTS.md). Builds the
# tree once with -DFD_ENABLE_TUNING=ON (a measurement build that reads the
# FD_TUNE_* overrides; never install it), then times flashdecoding alone on
# the bench's quick perf grid (--shape replaces it) with the library's
# defaults, with each knob setting, and with each forced split count, and
# prints one table.
#
#   usage: tools/tune.sh [--out DIR] [bench args...]
#   env:   FD_OUT_DIR         output folder (default build/tune; --out wins)
#          FD_BUILD_DIR       build directory (default build-tuning)
#          FD_CUDA_ARCHITECTURES  CMAKE_CUDA_ARCHITECTURES (default 90a)
#          FD_CMAKE_ARGS      extra cmake arguments
#          TUNE_KNOBS         space-separated VAR=value settings, one run each
#                             (default: every knob of native/src/tuning.h away
#                             from the planner's rule)
#          TUNE_SPLITS        forced split counts, one run each (default
#                             "1 2 4 8 16"; "" skips the sweep)
# The knobs: FD_TUNE_SPLITS, FD_TUNE_MAX_CTAS_PER_SM, FD_TUNE_WIDE (0 never,
# 1 D=64 only, 2 every unsplit grid), FD_TUNE_EARLY_TRIGGER, FD_TUNE_PREFETCH_KEYS,
# FD_TUNE_EVICT_FIRST.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
out=${FD_OUT_DIR:-$root/build/tune}
if [ "${1:-}" = --out ]; then out=$2; shift 2; fi
mkdir -p "$out"
bd=${FD_BUILD_DIR:-build-tuning}
export PYTHONUNBUFFERED=1 PYTHONPATH=$root/python${PYTHONPATH:+:$PYTHONPATH}
gen=(); command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
# shellcheck disable=SC2086
if ! { cmake -S . -B "$bd" "${gen[@]}" -DCMAKE_CUDA_ARCHITECTURES="${FD_CUDA_ARCHITECTURES:-90a}" \
         -DFD_ENABLE_TUNING=ON ${FD_CMAKE_ARGS:-} && cmake --build "$bd" -j"$(nproc)"; } \
       > "$out/build.log" 2>&1; then
  echo "tune: the tuning build failed (log: $out/build.log)" >&2
  tail -n 30 "$out/build.log" >&2
  exit 1
fi
lib=$root/$bd/libflashdecoding.so
default_knobs="FD_TUNE_WIDE=0 FD_TUNE_WIDE=2 FD_TUNE_MAX_CTAS_PER_SM=1 FD_TUNE_MAX_CTAS_PER_SM=2
  FD_TUNE_EARLY_TRIGGER=0 FD_TUNE_PREFETCH_KEYS=0 FD_TUNE_PREFETCH_KEYS=64
  FD_TUNE_EVICT_FIRST=0 FD_TUNE_EVICT_FIRST=1"
knobs=${TUNE_KNOBS-$default_knobs}
failed=0
run_bench() {  # run_bench <name> [VAR=value]
  local name=$1; shift
  if ! env "$@" FLASHDECODING_LIBRARY="$lib" python3 -m flashdecoding.bench \
      --methods flashdecoding --grid perf --quick --no-progress --json "$out/$name.json" "${bench_args[@]}" \
      > "$out/$name.log" 2>&1; then
    echo "tune: $name failed (log: $out/$name.log)" >&2
    failed=1
  fi
}
bench_args=("$@")
run_bench tune-defaults
for k in $knobs; do run_bench "tune-${k}" "$k"; done
for s in ${TUNE_SPLITS-1 2 4 8 16}; do run_bench "split-$s" "FD_TUNE_SPLITS=$s"; done
python3 - "$out" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
def load(p):
    d = json.load(open(p))
    return {r["label"]: r["results"].get("flashdecoding", {}) for r in d["rows"]}
rows, table = None, []
paths = sorted(glob.glob(os.path.join(out, "tune-*.json"))) + sorted(
    glob.glob(os.path.join(out, "split-*.json")), key=lambda p: int(p.split("-")[-1][:-5]))
for p in paths:
    try:
        res = load(p)
    except (OSError, ValueError, KeyError) as e:
        print(f"{os.path.basename(p)}: unreadable ({e})")
        continue
    rows = rows or list(res)
    table.append((os.path.basename(p)[:-5], [res.get(r, {}).get("us") for r in rows],
                  [res.get(r, {}).get("status", "absent") for r in rows]))
print("us per call (flashdecoding only; quick grid)")
width = max([12] + [len(name) + 1 for name, _, _ in table])
print("setting".ljust(width) + "".join("%9s" % (i + 1) for i in range(len(rows or []))))
for name, us, stt in table:
    print(name.ljust(width) + "".join("%9.2f" % u if u else "%9s" % (s or "-")[:8]
                                      for u, s in zip(us, stt)))
for i, r in enumerate(rows or []):
    print(f"  {i + 1}: {r}")
PY
exit $failed
