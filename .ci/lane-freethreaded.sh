#!/usr/bin/env bash
# CI lane: the whole suite on a free-threaded CPython 3.13 with the GIL off.
#
# The interpreter comes from .ci/freethreaded-python.sh (built once: about 4
# minutes on 2 idle cores, up to ~25 busy; then reused from its fixed
# directory).  The lane fails if the GIL is on in the venv's interpreter:
# checked before pytest and, through METALIO_EXPECT_NO_GIL, inside it
# (tests/test_examples_threads.py checks the test process and the servers
# it starts).
set -euo pipefail
cd "$(dirname "$0")/.."

# Pins for what would otherwise need a Rust build (no crate registry here):
# the last hypothesis release with a pure-Python wheel, and the last mypy
# without ast-serialize, which has no wheel for the free-threaded ABI.  mypy
# is not run in this lane (the main lane runs mypy --strict); it comes with
# the dev extra.
PINS=("hypothesis==6.155.7" "mypy==1.20.2")

echo "== free-threaded lane: interpreter"
python_ft=$(bash .ci/freethreaded-python.sh | tail -1)
"$python_ft" -VV

venv=.venv-ci-ft
echo "== free-threaded lane: venv $venv"
"$python_ft" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# The relay extra too: under CI=true the relay tests fail rather than skip
# without hiredis.  hiredis does not declare itself GIL-free; the suite runs
# with PYTHON_GIL=0, which keeps the GIL off anyway (and the check below
# imports only metalio).
"$venv/bin/python" -m pip install -q -e '.[dev,relay]' "${PINS[@]}"

echo "== free-threaded lane: is the GIL off?"
# Imports the package (and its C core, when built) and what the suite imports
# first.  Without PYTHON_GIL an extension module that does not declare itself
# free-threading-safe turns the GIL back on when imported, so the first run
# proves the GIL stays off by itself; the second is the setting the suite
# runs with.
gil_check=$(cat <<'EOF'
import sys

import hypothesis, pytest  # noqa: F401, E401

import metalio, metalio.net, metalio.apps.echo  # noqa: F401, E401

if not hasattr(sys, "_is_gil_enabled"):
    sys.exit(f"{sys.executable} is not a free-threaded build: {sys.version}")
if sys._is_gil_enabled():
    sys.exit(f"the GIL is enabled in {sys.executable} ({sys.version})")
speedups = getattr(metalio, "speedups", "n/a")
print(f"GIL off in {sys.executable} ({sys.version.splitlines()[0]}); metalio.speedups={speedups}")
EOF
)
env -u PYTHON_GIL "$venv/bin/python" -W error::RuntimeWarning -c "$gil_check"
PYTHON_GIL=0 "$venv/bin/python" -c "$gil_check"

export PYTHON_GIL=0
export METALIO_EXPECT_NO_GIL=1
echo "== free-threaded lane: the whole suite with PYTHON_GIL=0"
"$venv/bin/python" -m pytest -q -p no:cacheprovider
