#!/usr/bin/env bash
# Smoke test of the installed package, GPU not needed:
#   configure + build, install into a temporary prefix, then build a C99 host
#   (tests/c/consumer/consumer.c) against the INSTALLED package twice -- with
#   pkg-config and with find_package(flashdecoding CONFIG) -- and run both;
#   check the .so exports only fd_* symbols and that the installed header is
#   strict C99 (and C++) clean.
#
# Environment:
#   BUILD_DIR               build tree (default: <repo>/build)
#   FD_CUDA_ARCHITECTURES   passed as -DCMAKE_CUDA_ARCHITECTURES (default: the project's)
#   JOBS                    parallel build jobs (default: the CPU count)
#   CC, CXX                 compilers for the consumers (default: cc, c++)
#   KEEP_TMP=1              keep the temporary prefix for inspection
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
CC="${CC:-cc}"
CXX="${CXX:-c++}"
CONSUMER_DIR="$ROOT/tests/c/consumer"

failures=0
pass() { printf 'PASS %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; failures=$((failures + 1)); }
die() { printf 'FAIL %s\n' "$*"; printf 'smoke: FAIL\n'; exit 1; }

# Runs a command quietly; on failure shows its output and records a FAIL.
step() {
  local name="$1"; shift
  local log="$TMP/log.$(echo "$name" | tr -c 'A-Za-z0-9' '_')"
  local rc=0
  "$@" >"$log" 2>&1 || rc=$?
  if [ "$rc" -eq 0 ]; then
    pass "$name"
    return 0
  fi
  fail "$name (exit $rc): $*"
  sed 's/^/    | /' "$log" | tail -40
  return 1
}

TMP="$(mktemp -d "${TMPDIR:-/tmp}/fd-smoke.XXXXXX")" || die "mktemp"
cleanup() { if [ "${KEEP_TMP:-0}" = 1 ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi; }
trap cleanup EXIT
PREFIX="$TMP/prefix"

# ---- configure, build, install -------------------------------------------------
cfg=(-S "$ROOT" -B "$BUILD_DIR")
if [ -n "${FD_CUDA_ARCHITECTURES:-}" ]; then
  cfg+=("-DCMAKE_CUDA_ARCHITECTURES=$FD_CUDA_ARCHITECTURES")
fi
step "configure ($BUILD_DIR${FD_CUDA_ARCHITECTURES:+, archs $FD_CUDA_ARCHITECTURES})" \
  cmake "${cfg[@]}" || die "cannot configure"
step "build" cmake --build "$BUILD_DIR" -j "$JOBS" || die "cannot build"
step "install into a temporary prefix" cmake --install "$BUILD_DIR" --prefix "$PREFIX" \
  || die "cannot install"

LIBDIR=""
for d in lib lib64 "lib/$(uname -m)-linux-gnu"; do
  if ls "$PREFIX/$d"/libflashdecoding.so* >/dev/null 2>&1; then LIBDIR="$PREFIX/$d"; break; fi
done
[ -n "$LIBDIR" ] || die "no libflashdecoding.so under $PREFIX/{lib,lib64}"
SO="$(readlink -f "$LIBDIR/libflashdecoding.so")"
[ -e "$PREFIX/include/flashdecoding/flashdecoding.h" ] && pass "header installed" \
  || fail "header not installed at include/flashdecoding/flashdecoding.h"
[ -e "$LIBDIR/libflashdecoding.so" ] && pass "library installed ($SO)" \
  || fail "libflashdecoding.so not installed"

# ---- exported symbols ------------------------------------------------------------
if nm -D --defined-only "$SO" >"$TMP/nm.txt" 2>&1; then
  awk '{print $NF}' "$TMP/nm.txt" | sed 's/@.*//' | sort -u >"$TMP/exports.txt"
  bad="$(grep -Ev '^(fd_[A-Za-z0-9_]*|_init|_fini)$' "$TMP/exports.txt" || true)"
  if [ -z "$bad" ]; then
    pass "exports only fd_* ($(grep -c '^fd_' "$TMP/exports.txt") symbols)"
  else
    fail "exports symbols other than fd_*: $(echo "$bad" | head -20 | tr '\n' ' ')"
  fi
  # Every function the header declares is exported.
  declared="$(grep -oE 'FD_API[^(]*\bfd_[A-Za-z0-9_]+\(' "$PREFIX/include/flashdecoding/flashdecoding.h" \
              | grep -oE 'fd_[A-Za-z0-9_]+\($' | tr -d '(' | sort -u)"
  missing="$(comm -23 <(echo "$declared") "$TMP/exports.txt")"
  if [ -n "$declared" ] && [ -z "$missing" ]; then
    pass "every FD_API function of the header is exported ($(echo "$declared" | wc -l))"
  else
    fail "declared but not exported: $(echo "$missing" | tr '\n' ' ')"
  fi
else
  fail "nm -D failed on $SO"
fi

# No dynamic dependency on the CUDA driver or a shared CUDA runtime: the .so
# must load on a machine without a GPU driver.
if readelf -d "$SO" >"$TMP/dyn.txt" 2>&1; then
  needed="$(grep NEEDED "$TMP/dyn.txt" | sed 's/.*\[\(.*\)\]/\1/' | tr '\n' ' ')"
  if echo "$needed" | grep -Eq 'libcuda\.so|libcudart\.so'; then
    fail "library needs a CUDA driver/runtime .so: $needed"
  else
    pass "no libcuda/libcudart dependency (NEEDED: $needed)"
  fi
fi

# ---- the installed header on its own ----------------------------------------------
printf '#include <flashdecoding/flashdecoding.h>\nint main(void) { return fd_get_version() < 0; }\n' \
  >"$TMP/hdr.c"
step "header: $CC -std=c99 -Wall -Wextra -Werror -pedantic" \
  "$CC" -std=c99 -Wall -Wextra -Werror -pedantic -fsyntax-only -I"$PREFIX/include" "$TMP/hdr.c"
cp "$TMP/hdr.c" "$TMP/hdr.cpp"
step "header: $CXX -std=c++11 -Wall -Wextra -Werror -pedantic" \
  "$CXX" -std=c++11 -Wall -Wextra -Werror -pedantic -fsyntax-only -I"$PREFIX/include" "$TMP/hdr.cpp"

# ---- consumer via pkg-config --------------------------------------------------------
PCDIR=""
for d in "$LIBDIR/pkgconfig" "$PREFIX/lib/pkgconfig" "$PREFIX/lib64/pkgconfig" "$PREFIX/share/pkgconfig"; do
  if [ -e "$d/flashdecoding.pc" ]; then PCDIR="$d"; break; fi
done
if [ -z "$PCDIR" ]; then
  fail "flashdecoding.pc not installed"
elif ! command -v pkg-config >/dev/null 2>&1; then
  fail "pkg-config not found"
else
  export PKG_CONFIG_PATH="$PCDIR"
  pc_flags="$(pkg-config --cflags --libs flashdecoding 2>"$TMP/pc.err")" || {
    fail "pkg-config --cflags --libs flashdecoding: $(cat "$TMP/pc.err")"; pc_flags=""; }
  pc_libdir="$(pkg-config --variable=libdir flashdecoding 2>/dev/null)"
  pc_incdir="$(pkg-config --variable=includedir flashdecoding 2>/dev/null)"
  real_prefix="$(readlink -f "$PREFIX")"
  # The .pc must describe the prefix it was installed into, or the consumer
  # silently picks up some other copy (or none).
  if [ "$(readlink -f "$pc_libdir" 2>/dev/null)" = "$(readlink -f "$LIBDIR")" ] &&
     [ "$(readlink -f "$pc_incdir" 2>/dev/null)" = "$real_prefix/include" ]; then
    pass "flashdecoding.pc points into the install prefix"
  else
    fail "flashdecoding.pc points elsewhere: libdir=$pc_libdir includedir=$pc_incdir (installed under $PREFIX)"
  fi
  if [ -n "$pc_flags" ]; then
    # shellcheck disable=SC2086
    if step "consumer builds with pkg-config ($pc_flags)" \
        "$CC" -std=c99 -Wall -Wextra -Werror -pedantic "$CONSUMER_DIR/consumer.c" -o "$TMP/consumer_pc" \
        $pc_flags -Wl,-rpath,"$pc_libdir"; then
      resolved="$(ldd "$TMP/consumer_pc" 2>/dev/null | awk '/libflashdecoding/ {print $3}')"
      if [ "$(readlink -f "$resolved" 2>/dev/null)" = "$SO" ]; then
        pass "pkg-config consumer loads the installed library"
      else
        fail "pkg-config consumer resolves libflashdecoding to '${resolved:-nothing}', not $SO"
      fi
      step "pkg-config consumer runs" env -u LD_LIBRARY_PATH "$TMP/consumer_pc"
    fi
  fi
fi

# ---- consumer via find_package -------------------------------------------------------
if step "consumer configures with find_package(flashdecoding CONFIG)" \
    cmake -S "$CONSUMER_DIR" -B "$TMP/consumer-build" -DCMAKE_PREFIX_PATH="$PREFIX" \
    -DCMAKE_C_COMPILER="$CC" -DCMAKE_BUILD_TYPE=Release; then
  if step "consumer builds with flashdecoding::flashdecoding" \
      cmake --build "$TMP/consumer-build"; then
    bin="$TMP/consumer-build/consumer"
    resolved="$(ldd "$bin" 2>/dev/null | awk '/libflashdecoding/ {print $3}')"
    if [ "$(readlink -f "$resolved" 2>/dev/null)" = "$SO" ]; then
      pass "find_package consumer loads the installed library"
    else
      fail "find_package consumer resolves libflashdecoding to '${resolved:-nothing}', not $SO"
    fi
    step "find_package consumer runs" env -u LD_LIBRARY_PATH "$bin"
  fi
fi

echo
if [ "$failures" -eq 0 ]; then
  echo "smoke: PASS"
  exit 0
fi
echo "smoke: FAIL ($failures failed)"
exit 1
