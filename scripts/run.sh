#!/usr/bin/env bash
# Sets up a fresh machine and runs the main job: checks the prerequisites (and
# names what is missing), builds and installs the package into .venv
# (scripts/test.sh does the same set-up and runs the tests), then
# `python -m flashdecoding info` and `python -m flashdecoding run` — one decode of a
# Llama-3-8B step, checked against a float64 reference and timed.
# Arguments go to `flashdecoding run` (e.g. --batch 16 --k-len 8192 --dtype f16).
# FD_CUDA_ARCHITECTURES=90a builds for one architecture only (faster).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}
FD_PY_NEEDS="numpy ml_dtypes cuda.bindings scikit_build_core"
. "$ROOT/scripts/_prereqs.sh"
fd_check_prereqs "numpy=numpy>=1.22" "ml_dtypes=ml_dtypes>=0.2" "cuda.bindings=cuda-python>=12.0" \
  "scikit_build_core=scikit-build-core>=0.10"
. "$ROOT/scripts/_python_env.sh"
fd_need numpy "numpy>=1.22"
fd_need ml_dtypes "ml_dtypes>=0.2"
fd_need cuda.bindings "cuda-python>=12.0"
fd_need scikit_build_core "scikit-build-core>=0.10"
PIP_ARGS=(--no-build-isolation --no-deps --quiet -C build-dir=build/wheel)
if [ -n "${FD_CUDA_ARCHITECTURES:-}" ]; then
  PIP_ARGS+=(-C cmake.define.CMAKE_CUDA_ARCHITECTURES="$FD_CUDA_ARCHITECTURES")
fi
"$VPY" -m pip install "${PIP_ARGS[@]}" .
"$VPY" -m flashdecoding info
exec "$VPY" -m flashdecoding run "$@"
