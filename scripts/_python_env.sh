# Sourced by scripts/run.sh and scripts/test.sh: picks the Python that runs the
# package and installs only what it lacks, so an offline machine that already has
# everything (the GPU image) works and a fresh machine gets a .venv.
#   in:  ROOT, PYTHON (default python3), FD_VENV (default $ROOT/.venv), and
#        FD_PY_NEEDS: "import-name=requirement" words that must import.
#   out: VPY, the interpreter to use; say() for progress lines.
say() { printf '== %s\n' "$*"; }

PY=${PYTHON:-python3}
fd_has_all() {  # fd_has_all <python>: every FD_PY_NEEDS module imports
  local mods="" w
  for w in $FD_PY_NEEDS; do mods="$mods${mods:+, }${w%%=*}"; done
  "$1" -c "import $mods" >/dev/null 2>&1
}
if [ -z "${FD_VENV:-}" ] && fd_has_all "$PY"; then
  # Everything is there already (e.g. the GPU image, whose python3 is itself a
  # venv that a nested venv would not see into): use it as it is.
  VPY=$(command -v "$PY")
else
  VENV=${FD_VENV:-$ROOT/.venv}
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$PY" -m venv --system-site-packages "$VENV"
  fi
  VPY="$VENV/bin/python"
fi

# fd_need <import name> <pip requirement> [optional]: install when missing; a few
# quick retries so an offline machine falls through fast.
fd_need() {
  if "$VPY" -c "import $1" >/dev/null 2>&1; then return 0; fi
  say "installing $2"
  if ! "$VPY" -m pip install --quiet --retries 1 --timeout 15 "$2"; then
    if [ "${3:-}" = optional ]; then say "could not install $2 (optional, continuing)"; return 1; fi
    echo "error: cannot install $2" >&2
    exit 1
  fi
}
