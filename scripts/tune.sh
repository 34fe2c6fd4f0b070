#!/usr/bin/env bash
# Kernel tuning sweep on the GPU machine (measurement only; the library's
# defaults come from what this shows, recorded in docs/RESULTS.md):
#   - build variants of the CTA shape (FD_WARPS_PER_CTA, FD_STAGES),
#   - time flashdecoding alone on the PERF.md grid for each,
#   - sweep the split count (FD_TUNE_SPLITS) on the default build.
#   usage: scripts/tune.sh [variants...]   e.g. "w4s3 w4s4 w8s2p256"
#   (w: warps per CTA, s: cp.async stages, p: L2 prefetch hint bytes for every
#    head_dim, else the library's choice per layout; a trailing x: P in one mma instead of hi + lo; a _name
#    suffix names a variant whose extra -D flags are in TUNE_FLAGS_<variant>)
set -uo pipefail
out=${OUT:-/tmp/fd_out}; mkdir -p "$out"
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
export PYTHONUNBUFFERED=1 PYTHONPATH=$root/python${PYTHONPATH:+:$PYTHONPATH}
variants=${*:-"w4s3 w4s2 w4s4 w8s2 w8s3"}
for v in $variants; do
  base=${v%x}; splitp=1; [ "$base" != "$v" ] && splitp=0
  base=${base%%_*}
  w=${base#w}; w=${w%%s*}; s=${base#*s}; s=${s%%p*}; pf=
  case $base in *p*) pf=${base##*p};; esac
  extra_var=TUNE_FLAGS_$v; extra=${!extra_var:-}
  flags="-DFD_WARPS_PER_CTA=$w -DFD_STAGES=$s ${pf:+-DFD_L2_PREFETCH=$pf} -DFD_SPLIT_P=$splitp $extra"
  cmake -S . -B "build-$v" -G Ninja -DCMAKE_CUDA_ARCHITECTURES=90a \
    "-DCMAKE_CUDA_FLAGS=$flags" "-DCMAKE_CXX_FLAGS=$flags" > "$out/build-$v.log" 2>&1 \
    && cmake --build "build-$v" -j16 >> "$out/build-$v.log" 2>&1 || { echo "build $v failed"; tail "$out/build-$v.log"; continue; }
  FLASHDECODING_LIBRARY=$root/build-$v/libflashdecoding.so python3 -m flashdecoding.bench \
    --methods flashdecoding --quick --no-progress --json "$out/tune-$v.json" ${TUNE_BENCH_ARGS:-} \
    > "$out/tune-$v.log" 2>&1 || echo "bench $v rc=$?"
done
first=${variants%% *}
for knob in ${TUNE_KNOBS-FD_TUNE_ONE_CTA_PER_SM}; do
  env $knob=1 FLASHDECODING_LIBRARY=$root/build-$first/libflashdecoding.so python3 -m flashdecoding.bench \
    --methods flashdecoding --quick --no-progress --json "$out/tune-$knob.json" ${TUNE_BENCH_ARGS:-} \
    > "$out/tune-$knob.log" 2>&1
done
for s in ${TUNE_SPLITS-1 2 4 8 16}; do  # TUNE_SPLITS="" skips the sweep
  FD_TUNE_SPLITS=$s FLASHDECODING_LIBRARY=$root/build-$first/libflashdecoding.so python3 -m flashdecoding.bench \
    --methods flashdecoding --quick --no-progress --json "$out/split-$s.json" ${TUNE_BENCH_ARGS:-} \
    > "$out/split-$s.log" 2>&1 || echo "split $s rc=$?"
done
python3 - "$out" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
def load(p):
    d = json.load(open(p))
    return {r["label"]: r["results"].get("flashdecoding", {}) for r in d["rows"]}, d
rows = None
table = []
for p in sorted(glob.glob(os.path.join(out, "tune-*.json"))) + sorted(
        glob.glob(os.path.join(out, "split-*.json")), key=lambda p: int(p.split("-")[-1][:-5])):
    res, d = load(p)
    rows = rows or list(res)
    name = os.path.basename(p)[:-5]
    table.append((name, [res.get(r, {}).get("us") for r in rows],
                  [res.get(r, {}).get("status", "absent") for r in rows]))
print("us per call (flashdecoding only; quick); ceiling read GB/s as measured in each run")
width = max([12] + [len(name) + 1 for name, _, _ in table])
print("variant".ljust(width) + "".join("%9s" % (i + 1) for i in range(len(rows or []))))
for name, us, stt in table:
    print(name.ljust(width) + "".join("%9.2f" % u if u else "%9s" % (s or "-")[:8]
                                      for u, s in zip(us, stt)))
for i, r in enumerate(rows or []):
    print(f"  {i + 1}: {r}")
PY
