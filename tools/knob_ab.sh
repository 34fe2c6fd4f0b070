#!/usr/bin/env bash
# A/B of the launch planner's run-time knobs on one tuning build (GPU;
# measurement only): builds the tree with -DFD_ENABLE_TUNING=ON (the FD_TUNE_*
# overrides of native/src/tuning.h are read; never install it), then times
# flashdecoding alone with each '|'-separated set of environment variables in
# ENVS, REPS passes over all sets, and prints one line per run.
#   ENVS="|FD_TUNE_EARLY_TRIGGER=0|FD_TUNE_PREFETCH_KEYS=0" REPS=2 \
#     SHAPES="--shape 1,32,8,512,128 --shape 1,32,8,8192,128" tools/knob_ab.sh
# An empty set runs the library's defaults. Knobs: FD_TUNE_SPLITS,
# FD_TUNE_MAX_CTAS_PER_SM, FD_TUNE_WIDE, FD_TUNE_EARLY_TRIGGER,
# FD_TUNE_PREFETCH_KEYS, FD_TUNE_EVICT_FIRST, FD_TUNE_KEYS_AS_M, FD_TUNE_TABLE_WARMUP,
# FD_TUNE_LONGEST_FIRST, FD_TUNE_WARP_RANGES.
# env: FD_OUT_DIR (default build/knob_ab; --out DIR wins), FD_BUILD_DIR (default
#      build-tuning), FD_CUDA_ARCHITECTURES (default 90a), FD_CMAKE_ARGS (extra
#      cmake arguments).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
out=${FD_OUT_DIR:-$root/build/knob_ab}
if [ "${1:-}" = --out ]; then out=$2; shift 2; fi
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$root/python${PYTHONPATH:+:$PYTHONPATH}
bd=${FD_BUILD_DIR:-build-tuning}
gen=(); command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
# shellcheck disable=SC2086
if ! { cmake -S . -B "$bd" "${gen[@]}" -DCMAKE_CUDA_ARCHITECTURES="${FD_CUDA_ARCHITECTURES:-90a}" \
         -DFD_ENABLE_TUNING=ON ${FD_CMAKE_ARGS:-} && cmake --build "$bd" -j"$(nproc)"; } \
       > "$out/build.log" 2>&1; then
  echo "knob_ab: the tuning build failed (log: $out/build.log)" >&2
  tail -n 30 "$out/build.log" >&2
  exit 1
fi
IFS='|' read -ra sets <<< "${ENVS-}"
[ ${#sets[@]} -eq 0 ] && sets=("")
n=0
failed=0
for _ in $(seq "${REPS:-1}"); do
  for set in "${sets[@]}"; do
    n=$((n + 1))
    echo "$set" > "$out/knobs-$n.name"
    # shellcheck disable=SC2086
    env $set FLASHDECODING_LIBRARY="$root/$bd/libflashdecoding.so" python3 -m flashdecoding.bench \
      --methods flashdecoding --grid perf --quick --no-progress --json "$out/knobs-$n.json" ${SHAPES:-} \
      > "$out/knobs-$n.log" 2>&1 || { echo "set '$set' rc=$? (log: $out/knobs-$n.log)"; failed=1; }
  done
done
python3 - "$out" "$n" <<'PY'
import json, sys
out, n = sys.argv[1], int(sys.argv[2])
rows = None
for i in range(1, n + 1):
    try:
        d = json.load(open(f"{out}/knobs-{i}.json"))
    except (OSError, ValueError) as e:
        print(f"run {i}: no JSON ({e})")
        continue
    us = {r["label"]: r["results"].get("flashdecoding", {}).get("us") for r in d["rows"]}
    rows = rows or list(us)
    name = open(f"{out}/knobs-{i}.name").read().strip() or "(defaults)"
    print(f"{name[:44]:44s}" + "".join(f"{us[r]:8.2f}" if us.get(r) else "       -" for r in rows))
for j, r in enumerate(rows or []):
    print(f"  {j + 1}: {r}")
PY
exit $failed
