#!/usr/bin/env bash
# Fuzzes the host side of the C ABI with libFuzzer for a bounded time.
#
#   scripts/fuzz.sh [seconds]        (default: FD_FUZZ_SECONDS, else 60; 0 = off)
#
# Builds tests/fuzz/fuzz_host.cpp together with the library's host sources
# (every native/src/*.cpp but launch.cpp, the CUDA runtime side: problem rules,
# split policy, status, C ABI shims, kernel table, launch planner, merge rules)
# and a host-only stand-in for the launch (tests/fuzz/fake_launch.cpp), with clang's
# -fsanitize=fuzzer,address,undefined,integer and -fno-sanitize-recover=all: any
# sanitizer report, integer overflow (signed or unsigned), implicit truncation or
# sign change, crash, leak or broken invariant ends the run with a finding. Seeds
# come from tests/fuzz/corpus/ (committed); new inputs go to build/fuzz/corpus/.
# Prints the executions done and exits non-zero on any finding.
#
# Needs clang with libFuzzer (Debian/Ubuntu: the `clang` package, whose
# libclang-rt-<v>-dev dependency ships libclang_rt.fuzzer); installs it with
# apt-get when missing and it can. When clang cannot be found or installed, or
# the fuzzer does not build, it fails (exit 1): fuzzing is off only when asked
# (FD_FUZZ_SECONDS=0 or a 0 argument).
#
# Environment:
#   FD_FUZZ_SECONDS  seconds to fuzz when no argument is given (0: off)
#   CXX_FUZZ         clang++ to use (default: clang++ on PATH, else clang++-<v>)
#   FD_FUZZ_DIR      build/work directory (default: build/fuzz)
#   FD_OUT_DIR       when set, the log and any crash input are copied to
#                    $FD_OUT_DIR/fuzz/ (OUT is used when it is not set)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SECONDS_TO_RUN=${1:-${FD_FUZZ_SECONDS:-60}}
case "$SECONDS_TO_RUN" in ''|*[!0-9]*) echo "usage: $0 [seconds]" >&2; exit 2;; esac
if [ "$SECONDS_TO_RUN" = 0 ]; then
  echo "fuzz: off (FD_FUZZ_SECONDS=0)"
  exit 0
fi
WORK=${FD_FUZZ_DIR:-$ROOT/build/fuzz}
OUT_BASE=${FD_OUT_DIR:-${OUT:-}}
say() { printf '== %s\n' "$*"; }

find_clang() {
  if [ -n "${CXX_FUZZ:-}" ]; then echo "$CXX_FUZZ"; return 0; fi
  if command -v clang++ >/dev/null 2>&1; then echo clang++; return 0; fi
  local c
  for c in $(compgen -c clang++- 2>/dev/null | sort -t- -k2 -n -r | uniq); do
    echo "$c"; return 0
  done
  return 1
}

has_libfuzzer() {  # has_libfuzzer <clang++>
  printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' \
    > "$WORK/probe.cpp"
  "$1" -fsanitize=fuzzer "$WORK/probe.cpp" -o "$WORK/probe" >/dev/null 2>&1
}

mkdir -p "$WORK"
CXX=$(find_clang || true)
if [ -z "$CXX" ] || ! has_libfuzzer "$CXX"; then
  say "installing clang (libFuzzer)"
  SUDO=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
  if command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq clang >/dev/null 2>&1 || true
  fi
  CXX=$(find_clang || true)
  if [ -z "$CXX" ] || ! has_libfuzzer "$CXX"; then
    echo "fuzz: FAILED: no clang++ with libFuzzer, and it could not be installed" >&2
    echo "      (Debian/Ubuntu: apt-get install clang; or set CXX_FUZZ; FD_FUZZ_SECONDS=0 turns fuzzing off)" >&2
    exit 1
  fi
fi
say "$($CXX --version | head -1)"

SAN=(-fsanitize=fuzzer,address,undefined,integer -fno-sanitize-recover=all
     -fno-omit-frame-pointer)
# The library's host sources: all but launch.cpp (the CUDA runtime side, which
# tests/fuzz/fake_launch.cpp stands in for).
SRC=()
for f in native/src/*.cpp; do
  [ "$(basename "$f")" = launch.cpp ] || SRC+=("$f")
done
SRC+=(tests/fuzz/fake_launch.cpp tests/fuzz/fuzz_host.cpp)
# The cell list CMake writes for a build (every line of cells.def: the fake
# device runs fp8 cells too).
mkdir -p "$WORK/gen"
grep '^FD_CELL(' native/src/kernels/cells.def > "$WORK/gen/cell_list.inc"
BIN="$WORK/fuzz_host"
say "building $BIN"
if ! "$CXX" -std=c++17 -g -O1 "${SAN[@]}" -Wall -Wextra \
    -Inative/include -Inative/src -I"$WORK/gen" -Itests/fuzz \
    -DFD_BUILDING_LIBRARY -DFD_COMPILED_ARCHS='"fuzz"' \
    "${SRC[@]}" -o "$BIN"; then
  echo "fuzz: FAILED: the fuzzer does not build (see the compiler's messages above)" >&2
  exit 1
fi

mkdir -p "$WORK/corpus"
rm -rf "$WORK/artifacts" && mkdir -p "$WORK/artifacts"
LOG="$WORK/fuzz.log"
say "fuzzing for ${SECONDS_TO_RUN}s (seeds: tests/fuzz/corpus, $(ls tests/fuzz/corpus | wc -l) files)"
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
set +e
"$BIN" "$WORK/corpus" tests/fuzz/corpus \
  -max_total_time="$SECONDS_TO_RUN" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
  -print_final_stats=1 -artifact_prefix="$WORK/artifacts/" > "$LOG" 2>&1
RC=$?
set -e
if [ -n "$OUT_BASE" ]; then
  mkdir -p "$OUT_BASE/fuzz"
  cp "$LOG" "$OUT_BASE/fuzz/"
  cp -r "$WORK/artifacts" "$OUT_BASE/fuzz/" 2>/dev/null || true
fi
EXECS=$(sed -n 's/^stat::number_of_executed_units: *//p' "$LOG" | tail -1)
CORPUS=$(ls "$WORK/corpus" | wc -l)
ARTIFACTS=$(ls "$WORK/artifacts" | wc -l)
if [ "$RC" != 0 ] || [ "$ARTIFACTS" != 0 ]; then
  tail -n 60 "$LOG" >&2
  echo "fuzz: FINDING (exit $RC); inputs in $WORK/artifacts/: $(ls "$WORK/artifacts" | tr '\n' ' ')" >&2
  echo "      reproduce: $BIN <input>" >&2
  exit 1
fi
echo "fuzz: OK: ${EXECS:-?} executions in ${SECONDS_TO_RUN}s, no findings (corpus: $CORPUS new inputs; log: $LOG)"
