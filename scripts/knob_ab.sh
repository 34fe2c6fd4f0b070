#!/usr/bin/env bash
# A/B of run-time measurement knobs on one build (GPU machine; measurement only):
# builds the tree into $BD (default build-knobs; extra -D flags in $BFLAGS), then
# times flashdecoding alone with each '|'-separated set of environment variables
# in $ENVS, $REPS passes over all sets, and prints one line per run.
#   ENVS="|FD_TUNE_EARLY_TRIGGER=0|FD_TUNE_PREFETCH_KEYS=0" REPS=2 \
#     SHAPES="--shape 1,32,8,512,128 --shape 1,32,8,8192,128" bash scripts/knob_ab.sh
# An empty set runs the library's defaults.
set -uo pipefail
out=${OUT:-/tmp/fd_out}; mkdir -p "$out"
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
export PYTHONUNBUFFERED=1 PYTHONPATH=$root/python${PYTHONPATH:+:$PYTHONPATH}
bd=${BD:-build-knobs}
cmake -S . -B "$bd" -G Ninja -DCMAKE_CUDA_ARCHITECTURES=90a \
  ${BFLAGS:+"-DCMAKE_CUDA_FLAGS=$BFLAGS" "-DCMAKE_CXX_FLAGS=$BFLAGS"} > "$out/build.log" 2>&1 \
  && cmake --build "$bd" -j16 >> "$out/build.log" 2>&1 || { tail "$out/build.log"; exit 1; }
IFS='|' read -ra sets <<< "${ENVS-}"
[ ${#sets[@]} -eq 0 ] && sets=("")
n=0
for _ in $(seq "${REPS:-1}"); do
  for set in "${sets[@]}"; do
    n=$((n + 1))
    echo "$set" > "$out/knobs-$n.name"
    env $set FLASHDECODING_LIBRARY="$root/$bd/libflashdecoding.so" python3 -m flashdecoding.bench \
      --methods flashdecoding --quick --no-progress --json "$out/knobs-$n.json" ${SHAPES:-} \
      > "$out/knobs-$n.log" 2>&1 || echo "set '$set' rc=$?"
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
