#!/usr/bin/env bash
# The test command: installs what the tests need, builds with ASan+UBSan, runs the C unit tests
# (ctest), runs every libFuzzer target briefly, then the end-to-end tests with the official
# Appwrite SDKs against real clusters of separate processes. Exit status 0 only if all pass.
#   FUZZ_SECONDS=20   seconds per fuzz target
#   SKIP_INSTALL=1    skip apt/npm (when the machine is already set up)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
fuzz_seconds=${FUZZ_SECONDS:-20}
jobs=$(nproc)

step() { printf '\n=== %s ===\n' "$*"; }

if [ -z "${SKIP_INSTALL:-}" ]; then
    step "install dependencies"
    if [ "$(id -u)" = 0 ]; then bash scripts/install-deps.sh; else sudo bash scripts/install-deps.sh; fi
    (cd tests/e2e && npm ci --no-audit --no-fund)
fi

step "build with ASan + UBSan (gcc)"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DPRESENCED_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$jobs"

step "C unit tests (ctest)"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure)

step "fuzz targets (clang + libFuzzer, ${fuzz_seconds}s each)"
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DPRESENCED_FUZZ=ON \
    -DPRESENCED_SANITIZE=ON >/dev/null
cmake --build build-fuzz -j"$jobs"
for bin in build-fuzz/tests/fuzz_*; do
    name=$(basename "$bin"); name=${name#fuzz_}
    corpus_seed="tests/fuzz/corpus/$name"
    work="build-fuzz/corpus/$name"
    mkdir -p "$work"
    [ -d "$corpus_seed" ] && cp -n "$corpus_seed"/* "$work"/ 2>/dev/null || true
    echo "--- fuzz_$name"
    ASAN_OPTIONS=allocator_may_return_null=1:detect_leaks=1 \
        "$bin" -max_total_time="$fuzz_seconds" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="build-fuzz/crash-$name-" "$work" 2>&1 | tail -n 3
done

step "end-to-end tests (official SDKs, real cluster)"
PRESENCED_BIN="$root/build-asan/presenced" ASAN_OPTIONS=detect_leaks=0 bash tests/e2e/run.sh

# The roster helper's reconciliation and controller (clients/web/presence.js), no browser needed.
step "roster helper unit tests (node --test)"
node --test tests/web-unit/

# The console and the roster helper in a real browser: Debian's chromium, by playwright-core.
step "browser tests (headless chromium)"
if [ -n "${CHROMIUM_BIN:-}" ] || command -v chromium >/dev/null 2>&1; then
    if [ -z "${SKIP_INSTALL:-}" ] && [ -f examples/web/package-lock.json ]; then
        (cd examples/web && npm ci --no-audit --no-fund)
    fi
    PRESENCED_BIN="$root/build-asan/presenced" ASAN_OPTIONS=detect_leaks=0 \
        node --test --test-concurrency=1 tests/browser/*.test.js
else
    echo "SKIPPED: chromium is not installed (scripts/install-deps.sh installs it)"
fi

# Memory checks (bytes per connection, RSS bounds) mean nothing under ASan, which the tests
# above skip them in: they run here against a release build, so CI runs them too.
step "memory checks on a release build"
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-release -j"$jobs"
PRESENCED_BIN="$root/build-release/presenced" bash tests/e2e/run.sh \
    --test-name-pattern='10,000 idle subscribed|stops reading|half-sent headers' realtime.test.js resources.test.js

step "all tests passed"
