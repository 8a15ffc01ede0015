#!/bin/sh
# End-to-end tests: the official Appwrite SDKs against a real presenced cluster.
# Usage: tests/e2e/run.sh [file.test.js ...]   (default: every *.test.js, one after another)
# PRESENCED_BIN overrides the binary (default: <repo>/build/presenced).
# PRESENCED_E2E_KEEP_LOGS=1 keeps every server log under tests/e2e/logs/ (failures always do).
set -u
cd "$(dirname "$0")" || exit 2
: "${PRESENCED_BIN:=$(cd ../.. && pwd)/build/presenced}"
export PRESENCED_BIN
if [ ! -x "$PRESENCED_BIN" ]; then
    echo "e2e: presenced binary not found at $PRESENCED_BIN (build first or set PRESENCED_BIN)" >&2
    exit 2
fi
if [ ! -d node_modules/appwrite ] || [ ! -d node_modules/node-appwrite ]; then
    npm ci --no-audit --no-fund >&2 || exit 2
fi
if [ $# -eq 0 ]; then
    set -- *.test.js
fi
exec node --test --test-concurrency=1 "$@"
