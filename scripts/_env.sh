# shellcheck shell=bash
# Shared setup for scripts/demo and scripts/test: find interpreters, create virtual envs, build the
# native extension. Sourced, not run. Everything it creates lives under .venv/ in the repo.

COWPROF_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COWPROF_VENVS="$COWPROF_ROOT/.venv"

_cowprof_log() { printf '[cowprof setup] %s\n' "$*" >&2; }

# find_python 3.12 -> prints the path of a CPython 3.12 that can build extensions, or returns 1.
# Looks at $COWPROF_PYTHON_3_12 (dots as underscores), pythonX.Y on PATH, pyenv, uv, and /usr.
find_python() {
    local want=$1 var cand
    var="COWPROF_PYTHON_${want//./_}"
    local -a cands=()
    [ -n "${!var:-}" ] && cands+=("${!var}")
    command -v "python$want" >/dev/null 2>&1 && cands+=("$(command -v "python$want")")
    local pyenv_root=${PYENV_ROOT:-$HOME/.pyenv}
    for cand in "$pyenv_root"/versions/"$want"*/bin/python"$want" \
                "$HOME"/.local/share/uv/python/cpython-"$want"*/bin/python"$want" \
                /usr/local/bin/python"$want" /usr/bin/python"$want"; do
        [ -x "$cand" ] && cands+=("$cand")
    done
    for cand in "${cands[@]}"; do
        # a real CPython of that version, not free-threaded, with venv and the C headers
        if "$cand" - "$want" >/dev/null 2>&1 <<'PY'
import os, sys, sysconfig
want = tuple(int(p) for p in sys.argv[1].split("."))
assert sys.implementation.name == "cpython" and sys.version_info[:2] == want
assert not sysconfig.get_config_var("Py_GIL_DISABLED")
import venv  # noqa: F401
assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
PY
        then
            printf '%s\n' "$cand"
            return 0
        fi
    done
    return 1
}

# why_no_python 3.12 -> one line saying what is missing
why_no_python() {
    local want=$1
    if command -v "python$want" >/dev/null 2>&1; then
        echo "python$want is on PATH but lacks venv or its C headers (Debian/Ubuntu: apt-get install python$want-venv python$want-dev)"
    else
        echo "no CPython $want found (looked at \$COWPROF_PYTHON_${want//./_}, python$want on PATH, pyenv, uv, /usr); install it, e.g. 'pyenv install $want' or 'apt-get install python$want-dev python$want-venv'"
    fi
}

# ensure_venv 3.12 -> prints the venv's python; creates the venv, installs cowprof (editable, with
# the test and optional extras) and rebuilds the native extension when its sources changed.
ensure_venv() {
    local want=$1 py venv stamp want_stamp
    py=$(find_python "$want") || return 1
    venv="$COWPROF_VENVS/py$want"
    if [ ! -x "$venv/bin/python" ]; then
        _cowprof_log "creating virtual env $venv with $py"
        "$py" -m venv "$venv" >&2 || return 1
    fi
    want_stamp=$(cat "$COWPROF_ROOT/pyproject.toml" "$COWPROF_ROOT/setup.py" "$COWPROF_ROOT"/native/*.c \
                 "$COWPROF_ROOT"/native/*.h 2>/dev/null | cksum | cut -d' ' -f1)
    stamp="$venv/.cowprof-stamp"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want_stamp" ] || \
       ! "$venv/bin/python" -c "import cowprof._native" >/dev/null 2>&1; then
        _cowprof_log "installing cowprof and its dependencies into $venv (Python $want)"
        local log="$venv/pip-install.log"
        if ! { "$venv/bin/python" -m pip install --disable-pip-version-check --upgrade pip setuptools &&
               "$venv/bin/python" -m pip install --disable-pip-version-check -e "$COWPROF_ROOT[test]"; } >"$log" 2>&1; then
            tail -n 40 "$log" >&2
            _cowprof_log "installing into $venv failed; the full log is $log"
            return 1
        fi
        echo "$want_stamp" > "$stamp"
    fi
    printf '%s\n' "$venv/bin/python"
}

# ---- services the test suite starts itself ---------------------------------------------------------

# ensure_test_services: installs Debian's redis-server when it is missing (tests/integration/
# test_servers.py starts one per Celery test on a free 127.0.0.1 port); as root with apt-get,
# otherwise it says what to install and returns 1.
ensure_test_services() {
    command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        _cowprof_log "installing redis-server (the Celery tests start it on a free loopback port)"
        if { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server ||
             { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }; } >&2; then
            return 0
        fi
    fi
    _cowprof_log "redis-server is missing; install it (Debian: apt-get install redis-server)"
    return 1
}
