#!/usr/bin/env bash
# Installs the Debian packages the test suite and benchmarks need, only if missing.
# curl: a real HTTP client the tests drive the server with; wrk: the benchmark load tool;
# postgresql: initdb + pg_ctl for the throwaway database the tests start (Debian's package
# also creates and starts its own cluster on install: harmless, the tests do not use it);
# etcd-server: the etcd binary the registry tests start; nginx: the reference reverse proxy
# bench/proxy.py compares `tether proxy` with (Debian's `nginx` package is the smallest that
# has /usr/sbin/nginx with the upstream and proxy modules; nginx-light only adds a module to
# it. Where an init system runs, installing it also starts Debian's default site on port 80:
# harmless, the benchmark starts its own nginx from a config of its own).
# chromium, chromium-driver: the real browser tests/test_browser.py and
# tests/test_dashboard_browser.py drive with Selenium, and `make demo` screenshots its dashboard in
# (Debian builds the driver from the same source as the browser, so they always match).
# nghttp2-client: h2load, the HTTP/2 load tool bench/http2.py and tests/test_http2_clients.py run.
set -euo pipefail

need=()
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || need+=(nginx)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)

# `system-deps.sh PACKAGE...`: only those of the missing packages (make demo needs
# postgresql and the browser; the whole list is for make test).
if [ $# -gt 0 ]; then
    only=()
    for pkg in "${need[@]}"; do
        for want in "$@"; do [ "$pkg" = "$want" ] && only+=("$pkg"); done
    done
    need=("${only[@]}")
fi

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
