#!/usr/bin/env bash
# Checks that the committed static/dist/app.js is exactly what `tsc -p static`
# makes of static/src/app.ts (strict type-check included), with the pinned
# TypeScript from package-lock.json.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -d node_modules/typescript ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    echo "check-static: npm ci in static/"
    npm ci --no-audit --no-fund --loglevel=error
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

./node_modules/.bin/tsc -p . --outDir "$out"
if ! diff -u dist/app.js "$out/app.js"; then
    echo "check-static: static/dist/app.js is stale: run \`(cd static && npx tsc -p .)\` and commit it" >&2
    exit 1
fi
echo "check-static: static/dist/app.js matches static/src/app.ts ($(./node_modules/.bin/tsc --version))"
