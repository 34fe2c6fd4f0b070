#!/usr/bin/env bash
# Sets up a fresh machine and runs every test: checks the prerequisites (and
# names what is missing), builds and installs the package once (pip install .,
# which builds libflashdecoding.so through CMake with the C tests) into .venv,
# runs the C tests (ctest on that build), the Python tests (pytest), the install
# smoke test (its own build of one architecture: the installed CMake package,
# pkg-config and find_package consumers) and the fuzzer. GPU tests run when a GPU
# is present and skip with a reason otherwise; the summary at the end says which
# suites ran and which tests were skipped for want of a GPU or of an optional
# dependency (PyTorch, CuPy). Exits non-zero when any step failed.
#
# Environment:
#   PYTHON                  interpreter (default: python3); used as it is when it
#                           already has every dependency, else a venv is made from it
#   FD_CUDA_ARCHITECTURES   e.g. 90a: passed as CMAKE_CUDA_ARCHITECTURES (default: the
#                           project's list, the one users get)
#   FD_SMOKE_CUDA_ARCHITECTURES  the smoke test's one architecture (default: the
#                           first of FD_CUDA_ARCHITECTURES, else 80-real)
#   FD_VENV                 venv directory (default: .venv; setting it forces the venv)
#   FD_FUZZ_SECONDS         seconds of libFuzzer on the C ABI's host side (default 60;
#                           0 turns it off); scripts/fuzz.sh installs clang if needed
#                           and fails when it cannot
# Arguments are passed to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}
FD_PY_NEEDS="numpy ml_dtypes pytest hypothesis cuda.bindings scikit_build_core"
. "$ROOT/scripts/_prereqs.sh"
fd_check_prereqs --pkg-config "numpy=numpy>=1.22" "ml_dtypes=ml_dtypes>=0.2" \
  "pytest=pytest>=7" "hypothesis=hypothesis>=6"
set -e
. "$ROOT/scripts/_python_env.sh"
fd_need numpy "numpy>=1.22"
fd_need ml_dtypes "ml_dtypes>=0.2"
fd_need pytest "pytest>=7"
fd_need hypothesis "hypothesis>=6"
fd_need cuda.bindings "cuda-python>=12.0" optional || true
HAVE_SKBUILD=1
fd_need scikit_build_core "scikit-build-core>=0.10" optional || HAVE_SKBUILD=0
set +e

LOGS=$ROOT/build/test-logs
mkdir -p "$LOGS"
declare -A result
order=()
failed=0
record() {  # record <step> <rc> <text>
  order+=("$1")
  if [ "$2" = 0 ]; then result[$1]=$3; else result[$1]="FAILED: $3"; failed=1; fi
}

# ---- build and install (once) ---------------------------------------------------
CMAKE_ARGS=(-DFD_BUILD_TESTS=ON)
if [ -n "${FD_CUDA_ARCHITECTURES:-}" ]; then
  CMAKE_ARGS+=(-DCMAKE_CUDA_ARCHITECTURES="$FD_CUDA_ARCHITECTURES")
fi
BUILD_DIR=build/wheel
if [ "$HAVE_SKBUILD" = 1 ]; then
  say "pip install . (scikit-build-core, build dir $BUILD_DIR, C tests on)"
  PIP_ARGS=(--no-build-isolation --no-deps --quiet
            -C build-dir="$BUILD_DIR" -C cmake.define.FD_BUILD_TESTS=ON)
  if [ -n "${FD_CUDA_ARCHITECTURES:-}" ]; then
    PIP_ARGS+=(-C cmake.define.CMAKE_CUDA_ARCHITECTURES="$FD_CUDA_ARCHITECTURES")
  fi
  "$VPY" -m pip install "${PIP_ARGS[@]}" .
  rc=$?
  # The installed package, not the source tree, is what pytest imports.
  unset FLASHDECODING_LIBRARY || true
  PYPATH=""
  record build "$rc" "pip install . ($BUILD_DIR)"
else
  say "scikit-build-core unavailable: plain CMake build in $BUILD_DIR, tests from the source tree"
  cmake -S . -B "$BUILD_DIR" "${CMAKE_ARGS[@]}" &&
    cmake --build "$BUILD_DIR" --parallel "$CMAKE_BUILD_PARALLEL_LEVEL"
  rc=$?
  export FLASHDECODING_LIBRARY="$ROOT/$BUILD_DIR/libflashdecoding.so"
  PYPATH="$ROOT/python"
  record build "$rc" "CMake build ($BUILD_DIR)"
fi
if [ "${result[build]%%:*}" = FAILED ]; then
  echo "test: the build failed; nothing to test" >&2
  exit 1
fi

# ---- C tests -------------------------------------------------------------------------
if [ ! -f "$BUILD_DIR/CTestTestfile.cmake" ]; then
  echo "error: $BUILD_DIR/CTestTestfile.cmake is missing: the build did not configure the C" \
       "tests (FD_BUILD_TESTS=ON)" >&2
  record ctest 1 "no CTestTestfile.cmake in $BUILD_DIR"
else
  say "C tests (ctest; output in $LOGS/ctest.log)"
  ctest --test-dir "$BUILD_DIR" --output-on-failure -V > "$LOGS/ctest.log" 2>&1
  rc=$?
  grep -E "^[0-9]+: (GPU:|GPU cases|[0-9]+ passed, [0-9]+ failed|FAIL )" "$LOGS/ctest.log" |
    sed 's/^[0-9]*: /  /' | head -40
  tail -n 3 "$LOGS/ctest.log"
  gpu_line=$(grep -h -o -E "GPU cases skipped: [^\"]*|GPU: present" "$LOGS/ctest.log" | head -1)
  record ctest "$rc" "fd_test_abi and fd_consumer_build (${gpu_line:-GPU cases: see the log})"
fi

# ---- Python tests ----------------------------------------------------------------------
say "Python tests (pytest; output in $LOGS/pytest.log)"
PYTHONPATH="$PYPATH" "$VPY" -m pytest -q -rs tests/python "$@" 2>&1 | tee "$LOGS/pytest.log"
rc=${PIPESTATUS[0]}
record pytest "$rc" "$(tail -n 1 "$LOGS/pytest.log" | tr -d '=' | sed 's/^ *//')"

# ---- install smoke test --------------------------------------------------------------------
if [ "$HAVE_SKBUILD" = 1 ]; then
  # The wheel's build has no install rules for headers and CMake files: one
  # more build, of one architecture only.
  smoke_arch=${FD_SMOKE_CUDA_ARCHITECTURES:-${FD_CUDA_ARCHITECTURES:-80-real}}
  smoke_arch=${smoke_arch%%;*}
  say "install smoke test (scripts/smoke.sh, build/smoke, architecture $smoke_arch)"
  BUILD_DIR="$ROOT/build/smoke" FD_CUDA_ARCHITECTURES="$smoke_arch" bash "$ROOT/scripts/smoke.sh"
  rc=$?
  record smoke "$rc" "cmake --install, pkg-config and find_package consumers (build/smoke, $smoke_arch)"
else
  say "install smoke test (scripts/smoke.sh, reusing $BUILD_DIR)"
  BUILD_DIR="$ROOT/$BUILD_DIR" bash "$ROOT/scripts/smoke.sh"
  rc=$?
  record smoke "$rc" "cmake --install, pkg-config and find_package consumers ($BUILD_DIR)"
fi

# ---- fuzzing --------------------------------------------------------------------------------
if [ "${FD_FUZZ_SECONDS:-60}" = 0 ]; then
  order+=(fuzz); result[fuzz]="off (FD_FUZZ_SECONDS=0)"
else
  say "fuzzing the C ABI host side (scripts/fuzz.sh ${FD_FUZZ_SECONDS:-60})"
  bash "$ROOT/scripts/fuzz.sh" "${FD_FUZZ_SECONDS:-60}" 2>&1 | tee "$LOGS/fuzz.log"
  rc=${PIPESTATUS[0]}
  record fuzz "$rc" "$(tail -n 1 "$LOGS/fuzz.log")"
fi

# ---- what ran ----------------------------------------------------------------------------
echo
say "summary"
for s in "${order[@]}"; do printf '  %-7s %s\n' "$s" "${result[$s]}"; done
grep -E "^(GPU: |skipped for |FAILED \(FD_REQUIRE_GPU)" "$LOGS/pytest.log" | sed 's/^/  pytest  /'
if [ "$failed" != 0 ]; then
  echo "test: FAILED (logs in $LOGS)"
  exit 1
fi
echo "test: OK"
