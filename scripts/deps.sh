#!/bin/sh
# Installs the Debian packages turnout needs to build, run and test.
#   scripts/deps.sh install           install whatever is missing
#   scripts/deps.sh check-or-install  same, but silent when nothing is missing
#   scripts/deps.sh bench             also the benchmark peers (make bench)
# As root it runs apt-get; otherwise it prints the exact command and fails.
set -eu

PACKAGES="gcc make pkg-config libevent-dev libhiredis-dev libcurl4-openssl-dev
libjansson-dev libssl-dev zlib1g-dev redis-server python3 python3-celery python3-redis python3-rq
python3-pytest python3-requests python3-yaml python3-websockets prometheus curl
chromium chromium-driver python3-selenium clang libclang-rt-14-dev valgrind openssl"

# make bench: the peers it measures turnout against, and the profilers
[ "${1:-}" = "bench" ] && PACKAGES="$PACKAGES wrk nginx-light haproxy"

missing=""
for p in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$status" in
        *"install ok installed"*) ;;
        *) missing="$missing $p" ;;
    esac
done

if [ -z "$missing" ]; then
    [ "${1:-install}" != "check-or-install" ] && echo "deps: everything is installed"
    exit 0
fi

echo "deps: missing Debian packages:$missing"
cmd="apt-get install -y --no-install-recommends$missing"
if [ "$(id -u)" -ne 0 ]; then
    echo "deps: run as root:  apt-get update && $cmd" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing
echo "deps: installed:$missing"
