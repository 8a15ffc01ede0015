#!/usr/bin/env bash
# Installs everything presenced needs on a fresh Debian bookworm machine (run as root):
# the build toolchain and libraries, and the tools the tests and benchmarks use.
# The npm packages for the end-to-end tests are installed by tests/e2e/setup.sh.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(build-essential cmake pkg-config clang libclang-rt-14-dev
      libh2o-evloop-dev libwslay-dev libssl-dev libcurl4-openssl-dev
      libczmq-dev libzmq3-dev libmsgpack-dev libsodium-dev libjansson-dev zlib1g-dev libbsd-dev
      nodejs npm wrk procps curl tmux gnuplot-nox
      chromium)  # the browser tests (tests/browser): Debian's, driven by playwright-core
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# nodejs may come from another repository that ships npm inside it
if dpkg-query -W -f='${Version}' nodejs 2>/dev/null | grep -q nodesource; then
    missing=("${missing[@]/npm}")
fi
if [ "${#missing[@]}" -gt 0 ] && [ -n "$(echo "${missing[@]}" | tr -d ' ')" ]; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends ${missing[@]}
fi
# kubectl renders deploy/k8s for tests/e2e/k8s.test.js (kubectl kustomize); Debian's
# kubernetes-client, unless a kubectl is already installed (another package's would clash).
if ! command -v kubectl >/dev/null 2>&1; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends kubernetes-client
fi
