#!/usr/bin/env bash
# Sets up a fresh machine and runs every test: builds and installs the package
# (which builds libflashdecoding.so through CMake) into .venv, runs the C tests
# (ctest), the Python tests (pytest), the install smoke test and the fuzzer. GPU tests run when a GPU is present and
# skip with a reason otherwise.
#
# Environment:
#   PYTHON                  interpreter (default: python3); used as it is when it
#                           already has every dependency, else a venv is made from it
#   FD_CUDA_ARCHITECTURES   e.g. 90a: passed as CMAKE_CUDA_ARCHITECTURES (default: the
#                           project's list, the one users get)
#   FD_VENV                 venv directory (default: .venv; setting it forces the venv)
#   FD_FUZZ_SECONDS         seconds of libFuzzer on the C ABI's host side (default 60;
#                           0 skips it); scripts/fuzz.sh installs clang if needed
# Arguments are passed to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}
FD_PY_NEEDS="numpy ml_dtypes pytest hypothesis cuda.bindings scikit_build_core"
. "$ROOT/scripts/_python_env.sh"
fd_need numpy "numpy>=1.22"
fd_need ml_dtypes "ml_dtypes>=0.2"
fd_need pytest "pytest>=7"
fd_need hypothesis "hypothesis>=6"
fd_need cuda.bindings "cuda-python>=12.0" optional || true
HAVE_SKBUILD=1
fd_need scikit_build_core "scikit-build-core>=0.10" optional || HAVE_SKBUILD=0

CMAKE_ARGS=(-DFD_BUILD_TESTS=ON)
if [ -n "${FD_CUDA_ARCHITECTURES:-}" ]; then
  CMAKE_ARGS+=(-DCMAKE_CUDA_ARCHITECTURES="$FD_CUDA_ARCHITECTURES")
fi

BUILD_DIR=build/wheel
if [ "$HAVE_SKBUILD" = 1 ]; then
  say "pip install . (scikit-build-core, build dir $BUILD_DIR)"
  PIP_ARGS=(--no-build-isolation --no-deps --quiet
            -C build-dir="$BUILD_DIR" -C cmake.define.FD_BUILD_TESTS=ON)
  if [ -n "${FD_CUDA_ARCHITECTURES:-}" ]; then
    PIP_ARGS+=(-C cmake.define.CMAKE_CUDA_ARCHITECTURES="$FD_CUDA_ARCHITECTURES")
  fi
  "$VPY" -m pip install "${PIP_ARGS[@]}" .
  # The installed package, not the source tree, is what pytest imports.
  unset FLASHDECODING_LIBRARY || true
  PYPATH=""
else
  say "scikit-build-core unavailable: plain CMake build in $BUILD_DIR, tests from the source tree"
  cmake -S . -B "$BUILD_DIR" "${CMAKE_ARGS[@]}"
  cmake --build "$BUILD_DIR" --parallel "$CMAKE_BUILD_PARALLEL_LEVEL"
  export FLASHDECODING_LIBRARY="$ROOT/$BUILD_DIR/libflashdecoding.so"
  PYPATH="$ROOT/python"
fi

if [ -f "$BUILD_DIR/CTestTestfile.cmake" ]; then
  say "C tests (ctest)"
  ctest --test-dir "$BUILD_DIR" --output-on-failure
fi

say "Python tests (pytest)"
cd "$ROOT"
PYTHONPATH="$PYPATH" "$VPY" -m pytest -q -rs tests/python "$@"

say "install smoke test (scripts/smoke.sh: cmake --install, pkg-config and find_package consumers)"
BUILD_DIR="$ROOT/build/smoke" bash "$ROOT/scripts/smoke.sh"

if [ "${FD_FUZZ_SECONDS:-60}" != 0 ]; then
  say "fuzzing the C ABI host side (scripts/fuzz.sh ${FD_FUZZ_SECONDS:-60})"
  bash "$ROOT/scripts/fuzz.sh" "${FD_FUZZ_SECONDS:-60}"
fi
