# shellcheck shell=bash
# Shared setup for scripts/demo, scripts/test and scripts/pythons: find interpreters (on the host, or
# in the Debian root that scripts/pythons builds), create virtual envs, build the native extension.
# Sourced, not run. Virtual envs live under .venv/ in the repo; the Debian root under the cache dir.

COWPROF_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COWPROF_VENVS="$COWPROF_ROOT/.venv"
COWPROF_CACHE=${COWPROF_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cowprof}
COWPROF_SID_ROOT="$COWPROF_CACHE/debian-sid"
COWPROF_SID_VERSIONS="3.14 3.15"
# what the Debian root holds: interpreters with headers and venv, the debug build of 3.14, a compiler
# for cowprof's extension (and uWSGI, which also links libcrypt), and the servers the test suite starts
COWPROF_SID_PACKAGES="python3.14 python3.14-dev python3.14-venv python3.14-dbg python3.15 python3.15-dev
python3.15-venv gcc libc6-dev libcrypt-dev ca-certificates"
# (chromium: the HTML report's browser test, tests/integration/test_html_browser.py)
COWPROF_SID_SERVICES="redis-server chromium"

_cowprof_log() { printf '[cowprof setup] %s\n' "$*" >&2; }

# The check every interpreter passes: CPython of the wanted version ("3.14d": its debug build), not
# free-threaded, with venv and the C headers.
_COWPROF_PY_CHECK='
import os, sys, sysconfig
want = sys.argv[1]
debug = want.endswith("d")
assert sys.implementation.name == "cpython"
assert sys.version_info[:2] == tuple(int(p) for p in want.rstrip("d").split("."))
assert hasattr(sys, "gettotalrefcount") == debug
assert not sysconfig.get_config_var("Py_GIL_DISABLED")
import venv  # noqa: F401
assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
'

# find_python 3.12 -> prints the path of a CPython 3.12 on this host that can build extensions, or
# returns 1. Looks at $COWPROF_PYTHON_3_12 (dots as underscores), pythonX.Y on PATH, pyenv, uv, /usr.
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
        if "$cand" -c "$_COWPROF_PY_CHECK" "$want" >/dev/null 2>&1; then
            printf '%s\n' "$cand"
            return 0
        fi
    done
    return 1
}

# ---- the Debian root (scripts/pythons) -------------------------------------------------------------

# sid_run CMD... : run CMD inside the Debian root, in a private mount namespace with /proc, /dev and
# /sys mounted and this checkout bind-mounted at its own path (cwd kept when it lies inside the
# checkout). The mounts exist only for the command: nothing is left mounted afterwards.
sid_run() {
    unshare --mount --propagation private -- /bin/bash -c '
        set -e
        root=$1 repo=$2 cwd=$3; shift 3
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        mount --rbind /sys "$root/sys"
        mkdir -p "$root$repo"
        mount --bind "$repo" "$root$repo"
        case "$cwd" in "$repo"|"$repo"/*) ;; *) cwd=/ ;; esac
        exec chroot "$root" /usr/bin/env HOME=/root \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            /bin/sh -c "cd \"\$0\" && exec \"\$@\"" "$cwd" "$@"
    ' sid-run "$COWPROF_SID_ROOT" "$COWPROF_ROOT" "$PWD" "$@"
}

# sid_has_python 3.14 -> whether the Debian root is complete and has a working CPython 3.14
sid_has_python() {
    [ -f "$COWPROF_SID_ROOT/.cowprof-packages" ] && [ -x "$COWPROF_SID_ROOT/usr/bin/python$1" ] &&
        sid_run "/usr/bin/python$1" -c "$_COWPROF_PY_CHECK" "$1" >/dev/null 2>&1
}

# The host's network settings and CA bundle (which may hold a proxy's CA), copied in on every use.
_sid_copy_host_files() {
    local f
    for f in /etc/resolv.conf /etc/hosts /etc/ssl/certs/ca-certificates.crt; do
        [ -f "$f" ] && mkdir -p "$COWPROF_SID_ROOT$(dirname "$f")" && cp -L "$f" "$COWPROF_SID_ROOT$f"
    done
    return 0
}

# sid_provision: build (or complete) the Debian root; reuses it when its package list is current.
sid_provision() {
    local root=$COWPROF_SID_ROOT want have
    want=$(echo $COWPROF_SID_PACKAGES $COWPROF_SID_SERVICES)
    mkdir -p "$COWPROF_CACHE" || return 1
    (
        flock 9
        have=$(cat "$root/.cowprof-packages" 2>/dev/null)
        if [ "$have" = "$want" ]; then _sid_copy_host_files; exit 0; fi
        if [ "$(id -u)" != 0 ]; then
            _cowprof_log "building the Debian root for CPython $COWPROF_SID_VERSIONS needs root (debootstrap, chroot); run scripts/pythons as root, or install them yourself"
            exit 1
        fi
        for tool in unshare chroot flock; do
            command -v "$tool" >/dev/null || { _cowprof_log "$tool is missing (util-linux, coreutils)"; exit 1; }
        done
        if ! command -v debootstrap >/dev/null; then
            _cowprof_log "installing debootstrap"
            { apt-get install -y debootstrap || { apt-get update && apt-get install -y debootstrap; }; } >&2 || exit 1
        fi
        if [ ! -x "$root/usr/bin/apt-get" ]; then
            _cowprof_log "building a Debian sid root in $root (a few minutes)"
            rm -rf "$root.partial"
            # in its own mount namespace: whatever debootstrap mounts inside the target goes with it
            unshare --mount --propagation private -- debootstrap --variant=minbase \
                --include="$(echo $COWPROF_SID_PACKAGES | tr ' ' ,)" sid "$root.partial" \
                >"$COWPROF_CACHE/debootstrap.log" 2>&1 || {
                tail -n 20 "$COWPROF_CACHE/debootstrap.log" >&2
                _cowprof_log "debootstrap failed; the log is $COWPROF_CACHE/debootstrap.log"
                exit 1
            }
            mv "$root.partial" "$root"
        fi
        # services never start inside the root on their own (the tests start them on free ports)
        printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d" && chmod 755 "$root/usr/sbin/policy-rc.d"
        _sid_copy_host_files
        _cowprof_log "installing into the Debian root: $want"
        sid_run /bin/sh -c 'apt-get -o Acquire::Check-Valid-Until=false update -qq &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"' \
            sh $want >"$COWPROF_CACHE/apt.log" 2>&1 || {
            tail -n 20 "$COWPROF_CACHE/apt.log" >&2
            _cowprof_log "apt-get in the Debian root failed; the log is $COWPROF_CACHE/apt.log"
            exit 1
        }
        echo "$want" >"$root/.cowprof-packages"
    ) 9>"$COWPROF_CACHE/debian-sid.lock"
}

# in_python_env 3.14 CMD... : run CMD where CPython 3.14 lives: on the host, or in the Debian root
in_python_env() {
    local want=$1
    shift
    if find_python "$want" >/dev/null; then "$@"; else sid_run "$@"; fi
}

# why_no_python 3.12 -> one line saying what is missing
why_no_python() {
    local want=$1
    case " $COWPROF_SID_VERSIONS 3.14d " in
        *" $want "*) echo "no CPython $want found on this machine or in the Debian root $COWPROF_SID_ROOT; run scripts/pythons (as root) to build it, or install python$want with its -dev and -venv packages"; return ;;
    esac
    if command -v "python$want" >/dev/null 2>&1; then
        echo "python$want is on PATH but lacks venv or its C headers (Debian/Ubuntu: apt-get install python$want-venv python$want-dev)"
    else
        echo "no CPython $want found (looked at \$COWPROF_PYTHON_${want//./_}, python$want on PATH, pyenv, uv, /usr); install it, e.g. 'pyenv install $want' or 'apt-get install python$want-dev python$want-venv'"
    fi
}

# ensure_venv 3.12 -> prints the venv's python (run it through `in_python_env 3.12`); creates the venv
# (on the host, or inside the Debian root for versions only it has), installs cowprof (editable, with
# the test and optional extras) and rebuilds the native extension when its sources changed.
ensure_venv() {
    local want=$1 py venv stamp want_stamp
    if ! py=$(find_python "$want"); then
        sid_has_python "$want" || return 1
        py=/usr/bin/python$want
    fi
    venv="$COWPROF_VENVS/py$want"
    # (asked where the version lives: a venv in the Debian root points at an interpreter the host lacks)
    if ! in_python_env "$want" "$venv/bin/python" -c "" 2>/dev/null; then
        _cowprof_log "creating virtual env $venv with $py"
        rm -rf "$venv"
        in_python_env "$want" "$py" -m venv "$venv" >&2 || return 1
    fi
    want_stamp=$(cat "$COWPROF_ROOT/pyproject.toml" "$COWPROF_ROOT/setup.py" "$COWPROF_ROOT"/native/*.c \
                 "$COWPROF_ROOT"/native/*.h 2>/dev/null | cksum | cut -d' ' -f1)
    stamp="$venv/.cowprof-stamp"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want_stamp" ] || \
       ! in_python_env "$want" "$venv/bin/python" -c "import cowprof._native" >/dev/null 2>&1; then
        _cowprof_log "installing cowprof and its dependencies into $venv (Python $want)"
        local log="$venv/pip-install.log"
        # --no-compile: byte-compiling every installed file (all of Django, Celery...) was most of the
        # install's CPU; Python compiles what is imported, once, on first use
        if ! in_python_env "$want" /bin/sh -c '"$1" -m pip install --disable-pip-version-check --upgrade pip setuptools &&
               "$1" -m pip install --disable-pip-version-check --no-compile -e "$2[test]"' sh "$venv/bin/python" "$COWPROF_ROOT" >"$log" 2>&1; then
            tail -n 40 "$log" >&2
            _cowprof_log "installing into $venv failed; the full log is $log"
            return 1
        fi
        echo "$want_stamp" > "$stamp"
    fi
    printf '%s\n' "$venv/bin/python"
}

# ---- services the test suite starts itself ---------------------------------------------------------

# _ensure_debian_package COMMAND PACKAGE WHY: installs PACKAGE with apt-get when COMMAND is missing
# (as root with apt-get), otherwise says what to install and returns 1.
_ensure_debian_package() {
    local cmd=$1 pkg=$2 why=$3
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/bin/$cmd" ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        _cowprof_log "installing $pkg ($why)"
        if { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" ||
             { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg"; }; } >&2; then
            return 0
        fi
    fi
    _cowprof_log "$cmd is missing; install it (Debian: apt-get install $pkg)"
    return 1
}

# ensure_test_services: installs Debian's redis-server when it is missing (tests/integration/
# test_servers.py starts one per Celery test on a free 127.0.0.1 port) and, with CI=true, Debian's
# chromium (tests/integration/test_html_browser.py loads the HTML report in it headless; elsewhere
# that test skips, saying so, without it). Returns 1 when one could not be installed.
ensure_test_services() {
    local status=0
    _ensure_debian_package redis-server redis-server "the Celery tests start it on a free loopback port" || status=1
    if [ "${CI:-}" = "true" ]; then
        _ensure_debian_package chromium chromium "the HTML report's browser test" || status=1
    fi
    return $status
}
