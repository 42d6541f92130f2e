#!/usr/bin/env bash
# The relay lane's prerequisites, for the tests/test_relay.py run of .ci/run:
# redis-server (Debian's package; the tests start their own instances on free
# ports, so the system service must not start) and the [relay] extra (hiredis)
# in the virtualenv .ci/run has activated.  With CI=true the relay tests fail,
# not skip, when either is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
    echo "== relay lane: installing redis-server"
    # No service start during the install: invoke-rc.d asks policy-rc.d, and 101
    # means "denied".  A policy already in place is left as it is.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server
fi
echo "== relay lane: $(redis-server --version)"

python -m pip install -q -e '.[relay]'
python -c 'import hiredis; print("== relay lane: hiredis", hiredis.__version__)'
