#!/usr/bin/env bash
# Sets up a fresh machine and runs the main job: builds and installs the package
# into .venv (scripts/test.sh does the same set-up and runs the tests), then
# `python -m flashdecoding info` and `python -m flashdecoding run` — one decode of a
# Llama-3-8B step, checked against a float64 reference and timed.
# Arguments go to `flashdecoding run` (e.g. --batch 16 --k-len 8192 --dtype f16).
# FD_CUDA_ARCHITECTURES=90a builds for one architecture only (faster).
set -euo pipefail
RUN_ARGS=("$@")  # kept aside: the loop below reuses the positional parameters
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${FD_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}

[ -x "$VENV/bin/python" ] || "$PY" -m venv --system-site-packages "$VENV"
VPY="$VENV/bin/python"
for req in "numpy numpy>=1.22" "ml_dtypes ml_dtypes>=0.2" "cuda.bindings cuda-python>=12.0" \
           "scikit_build_core scikit-build-core>=0.10"; do
  set -- $req
  "$VPY" -c "import $1" >/dev/null 2>&1 || "$VPY" -m pip install --quiet "$2"
done
PIP_ARGS=(--no-build-isolation --no-deps --quiet -C build-dir=build/wheel)
if [ -n "${FD_CUDA_ARCHITECTURES:-}" ]; then
  PIP_ARGS+=(-C cmake.define.CMAKE_CUDA_ARCHITECTURES="$FD_CUDA_ARCHITECTURES")
fi
"$VPY" -m pip install "${PIP_ARGS[@]}" .
"$VPY" -m flashdecoding info
exec "$VPY" -m flashdecoding run ${RUN_ARGS[@]+"${RUN_ARGS[@]}"}
