#!/usr/bin/env bash
# Installs what `make test` needs beyond the Rust toolchain: Debian's chromium
# for the browser tests and the page's npm packages (from static/package-lock.json).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "deps: installing $* with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        echo "deps: missing $*; install it with: sudo apt-get install -y $*" >&2
        exit 1
    fi
}

[ -x /usr/bin/chromium ] || apt_install chromium
command -v node >/dev/null || apt_install nodejs npm
# tests/security.rs makes its CA and server certificates with the openssl CLI.
command -v openssl >/dev/null || apt_install openssl

# npm ci only when the lockfile changed since the last install.
stamp=static/node_modules/.package-lock.json
if [ ! -f "$stamp" ] || [ static/package-lock.json -nt "$stamp" ]; then
    echo "deps: npm ci in static/"
    (cd static && npm ci --no-audit --no-fund --loglevel=error)
fi
