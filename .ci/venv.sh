#!/usr/bin/env bash
# Creates or updates target/venv with the pinned PyPI tools of .ci/requirements.txt: the one
# place that installs them, for .ci/check-deploy.sh (make check-deploy) and the schemathesis
# test in tests/hostile_http.rs. Does nothing when every pin is installed already. Other
# scripts share target/venv, so it installs under target/venv.lock.
#
# Exits non-zero with one `FAIL setup: …` line on stderr when it cannot.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

VENV=target/venv
REQUIREMENTS=.ci/requirements.txt

die() {
    echo "FAIL setup: $*" >&2
    exit 1
}

# True when every `name==version` line of the requirements is installed in the venv.
requirements_installed() {
    "$VENV/bin/python" - "$REQUIREMENTS" <<'PY' 2>/dev/null
import sys
from importlib.metadata import PackageNotFoundError, version

for line in open(sys.argv[1], encoding="utf-8"):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, wanted = line.split("==")
    try:
        if version(name) != wanted:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
}

mkdir -p target
exec 9>target/venv.lock
flock -w 600 9 || die "timed out waiting for target/venv.lock"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c '' 2>/dev/null; then
    python3 -m venv --clear "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
fi
if ! requirements_installed; then
    echo "installing the pinned tools of $REQUIREMENTS into $VENV"
    log=$(mktemp)
    if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "pip install -r $REQUIREMENTS failed"
    fi
    rm -f "$log"
fi
