#!/usr/bin/env bash
# Installs the Debian packages the test suite and benchmarks need, only if missing.
# curl: a real HTTP client the tests drive the server with; wrk: the benchmark load tool.
set -euo pipefail

need=()
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v wrk >/dev/null 2>&1 || need+=(wrk)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo="sudo"
    else
        echo "system-deps: need root (or sudo) to install: ${need[*]}" >&2
        exit 1
    fi
fi
echo "system-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
