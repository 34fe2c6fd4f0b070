# Sourced by scripts/test.sh and scripts/run.sh before anything is built: checks
# what a fresh machine needs and names everything missing at once (exit 2).
#   fd_check_prereqs [--pkg-config] [module=requirement ...]
# The modules are the Python packages the script cannot do without; when one is
# missing, pip must be able to fetch it: network access to PyPI, or an offline
# index (PIP_INDEX_URL, PIP_FIND_LINKS or pip's own configuration).
#   in: ROOT, PYTHON (default python3), FD_VENV, FD_PY_NEEDS (as _python_env.sh)

fd_version_at_least() {  # fd_version_at_least <have> <want>: dotted versions
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]
}

fd_check_prereqs() {
  local need_pkg_config=0 required=() missing=() py=${PYTHON:-python3} w
  while [ $# -gt 0 ]; do
    case "$1" in --pkg-config) need_pkg_config=1;; *) required+=("$1");; esac
    shift
  done

  # Python 3.9+, and the venv module when a venv will be made.
  local have_py=0
  if ! command -v "$py" >/dev/null 2>&1; then
    missing+=("python3 >= 3.9: '$py' not found (Debian/Ubuntu: apt-get install python3 python3-venv)")
  elif ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
    missing+=("python3 >= 3.9: '$py' is $("$py" -V 2>&1)")
  else
    have_py=1
  fi
  local vpy=$py venv=${FD_VENV:-$ROOT/.venv} mods=""
  for w in $FD_PY_NEEDS; do mods="$mods${mods:+, }${w%%=*}"; done
  if [ "$have_py" = 1 ]; then
    if [ -n "${FD_VENV:-}" ] || ! "$py" -c "import $mods" >/dev/null 2>&1; then
      if [ -x "$venv/bin/python" ]; then
        vpy=$venv/bin/python
      elif ! "$py" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        missing+=("python3-venv: '$py -m venv' cannot make $venv (Debian/Ubuntu: apt-get install python3-venv)")
      fi
    fi
  fi

  # Compilers, CMake, the CUDA toolkit.
  local cc=${CC:-} cxx=${CXX:-} c
  if [ -z "$cc" ]; then for c in cc gcc clang; do command -v "$c" >/dev/null 2>&1 && { cc=$c; break; }; done; fi
  if [ -z "$cc" ] || ! command -v "$cc" >/dev/null 2>&1; then
    missing+=("a C compiler (cc, gcc or clang; Debian/Ubuntu: apt-get install build-essential)")
  fi
  if [ -z "$cxx" ]; then for c in c++ g++ clang++; do command -v "$c" >/dev/null 2>&1 && { cxx=$c; break; }; done; fi
  if [ -z "$cxx" ] || ! command -v "$cxx" >/dev/null 2>&1; then
    missing+=("a C++ compiler (c++, g++ or clang++; Debian/Ubuntu: apt-get install build-essential)")
  fi
  if ! command -v cmake >/dev/null 2>&1; then
    missing+=("cmake >= 3.24 (pip install cmake, or your distribution's package)")
  else
    local cv
    cv=$(cmake --version 2>/dev/null | sed -n 's/^cmake version \([0-9.]*\).*/\1/p' | head -1)
    fd_version_at_least "${cv:-0}" 3.24 || missing+=("cmake >= 3.24 (found ${cv:-an unknown version})")
  fi
  local nvcc=${CUDACXX:-}
  [ -z "$nvcc" ] && nvcc=$(command -v nvcc 2>/dev/null || true)
  [ -z "$nvcc" ] && [ -x /usr/local/cuda/bin/nvcc ] && nvcc=/usr/local/cuda/bin/nvcc
  if [ -z "$nvcc" ] || [ ! -x "$(command -v "$nvcc" 2>/dev/null || echo "$nvcc")" ]; then
    missing+=("the CUDA toolkit >= 12.0 (nvcc not on PATH, in CUDACXX or at /usr/local/cuda/bin/nvcc)")
  else
    local nv
    nv=$("$nvcc" --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p' | head -1)
    fd_version_at_least "${nv:-0}" 12.0 || missing+=("the CUDA toolkit >= 12.0 ($nvcc is release ${nv:-unknown})")
  fi
  if [ "$need_pkg_config" = 1 ] && ! command -v pkg-config >/dev/null 2>&1; then
    missing+=("pkg-config (the install smoke test builds a consumer with it; apt-get install pkg-config)")
  fi

  # Python packages pip will have to fetch: is there an index to fetch them from?
  if [ "$have_py" = 1 ] && [ ${#required[@]} -gt 0 ]; then
    local absent=()
    for w in "${required[@]}"; do
      "$vpy" -c "import ${w%%=*}" >/dev/null 2>&1 || absent+=("${w#*=}")
    done
    if [ ${#absent[@]} -gt 0 ] && ! fd_has_index "$vpy"; then
      missing+=("network access to PyPI for the first set-up, or an offline index (PIP_INDEX_URL / PIP_FIND_LINKS), to install: ${absent[*]}")
    fi
  fi

  if [ ${#missing[@]} -gt 0 ]; then
    echo "error: this machine lacks what the build and the tests need:" >&2
    for w in "${missing[@]}"; do echo "  - $w" >&2; done
    exit 2
  fi
}

# 0 when pip has somewhere to install from: an index or links configured, a
# proxy, or pypi.org reachable.
fd_has_index() {
  if [ -n "${PIP_INDEX_URL:-}${PIP_FIND_LINKS:-}${PIP_EXTRA_INDEX_URL:-}" ]; then return 0; fi
  if "$1" -m pip config list 2>/dev/null | grep -Eq 'index-url|find-links'; then return 0; fi
  if [ -n "${https_proxy:-}${HTTPS_PROXY:-}" ]; then return 0; fi
  "$1" - <<'PY' >/dev/null 2>&1
import socket
socket.create_connection(("pypi.org", 443), timeout=5).close()
PY
}
