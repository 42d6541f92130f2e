#!/usr/bin/env bash
# The C core's lane (docs/speedups.md), after the main lane of .ci/run:
#  (a) a strict build (-Wall -Wextra -Werror -O2; a warning fails) of
#      metalio._speedups as a wheel on every supported CPython found here,
#      each wheel's extension imported by its own interpreter, and the C-core
#      tests run on each of them;
#  (b) the whole suite once more, on the pure-Python path (METALIO_PURE_PYTHON=1;
#      the main lane ran it on the C core, which tests/test_speedups_loader.py
#      checks under CI=true);
#  (c) the descriptor-call, stream-type, dispatch, readiness, TCP and loop
#      suites under valgrind memcheck:
#      any memory error fails, and so does a definite leak allocated through
#      the extension.
# Standalone too: `bash .ci/lane-speedups.sh` from a checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d "${TMPDIR:-/tmp}/metalio-speedups.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "== speedups (a): strict build on every supported CPython"
interpreters=()
for version in 3.10 3.11 3.12 3.13; do
    found=""
    for candidate in $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/python3 2>/dev/null | sort -rV) \
                     $(command -v "python$version" 2>/dev/null || true); do
        if "$candidate" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$version'.split('.'))))" 2>/dev/null; then
            found=$candidate
            break
        fi
    done
    if [[ -z $found ]]; then
        echo "== SKIP strict build on Python $version: no working interpreter found"
        continue
    fi
    interpreters+=("$found")
done
if [[ ${#interpreters[@]} -eq 0 ]]; then
    interpreters=("$(command -v python3)")
fi
for interpreter in "${interpreters[@]}"; do
    version=$("$interpreter" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    out="$work/wheel-$version"
    echo "-- $version: $interpreter"
    # The isolated build env gets setuptools from the index; build/ is per-tag.
    METALIO_STRICT_BUILD=1 nice "$interpreter" -m pip wheel -q --no-deps -w "$out" "$root"
    mkdir -p "$out/tree"
    "$interpreter" -m zipfile -e "$out"/metalio-*.whl "$out/tree"
    (cd "$work" && PYTHONPATH="$out/tree" "$interpreter" -c \
        'import metalio, metalio._speedups as s; assert metalio.speedups == "c", metalio.speedups; print("   built and loaded:", s.__file__.rsplit("/", 1)[-1])')
done

echo "== speedups: the C-core tests on the other interpreters"
main_version=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
for interpreter in "${interpreters[@]}"; do
    version=$("$interpreter" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [[ $version == "$main_version" ]] && continue  # the main lane and (b) run everything there
    venv=".venv-ci-$version"  # .ci/run's quick-pass virtualenv, when it made one
    if [[ ! -x $venv/bin/python ]]; then
        "$interpreter" -m venv "$venv"
        "$venv/bin/python" -m pip install -q --upgrade pip
        nice "$venv/bin/python" -m pip install -q -e '.[dev]'
    fi
    echo "-- $version"
    "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_speedups.py tests/test_speedups_loader.py \
        tests/test_speedups_stream.py tests/test_io_dispatch.py tests/test_readiness.py
done

echo "== speedups: the lane's virtualenv, built strictly"
python3 -m venv .venv-ci-speedups
# shellcheck disable=SC1091
. .venv-ci-speedups/bin/activate
python -m pip install -q --upgrade pip
METALIO_STRICT_BUILD=1 nice python -m pip install -q -e '.[dev]'
# What the main lane's virtualenv has for the other suites (redis-server and
# the [relay] extra: with CI=true the relay tests fail when either is missing).
if [[ -f .ci/lane-relay.sh ]]; then
    METALIO_STRICT_BUILD=1 bash .ci/lane-relay.sh
fi
python -c 'import metalio; assert metalio.speedups == "c", metalio.speedups; print("   metalio.speedups ==", repr(metalio.speedups))'

echo "== speedups (b): the whole suite on the pure-Python path (METALIO_PURE_PYTHON=1)"
METALIO_PURE_PYTHON=1 python -c 'import metalio; assert metalio.speedups == "python"'
METALIO_PURE_PYTHON=1 python -m pytest -q -p no:cacheprovider

echo "== speedups (c): valgrind memcheck of the C core's suites, TCP and the loop"
if ! command -v valgrind >/dev/null; then
    apt-get update -qq && apt-get install -y -qq valgrind >/dev/null
fi
logs="$work/valgrind"
mkdir -p "$logs"
# PYTHONMALLOC=malloc: every object is a malloc block valgrind can check.
# The tracemalloc test is left to the plain runs: tracemalloc's own tables
# look like leaks to valgrind, and it is the slowest test there.
status=0
PYTHONMALLOC=malloc valgrind --tool=memcheck --error-exitcode=99 \
    --suppressions=.ci/valgrind-python.supp \
    --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=none \
    --num-callers=40 --log-file="$logs/vg.%p.log" \
    python -m pytest -q -p no:cacheprovider --timeout=600 \
        tests/test_speedups.py tests/test_speedups_stream.py tests/test_io_dispatch.py \
        tests/test_readiness.py tests/test_net_tcp.py tests/test_loop.py \
        -k "not memory_stays_bounded" || status=$?
python - "$logs" <<'EOF'
"""Print the memory errors valgrind kept, and fail on a definite leak through the extension."""
import pathlib, re, sys

bad = 0
for log in sorted(pathlib.Path(sys.argv[1]).glob("vg.*.log")):
    text = log.read_text(errors="replace")
    summary = re.search(r"ERROR SUMMARY: (\d+) errors", text)
    records = re.split(r"\n==\d+== \n", text)
    leaks = [r for r in records if "definitely lost in loss record" in r and "_speedups" in r]
    errors = [r for r in records if re.search(r"== (Invalid|Conditional|Use of|Syscall param|Mismatched)", r)]
    for record in errors + leaks:
        print(record)
    print(f"   {log.name}: {summary.group(1) if summary else '?'} errors, "
          f"{len(leaks)} definite leak(s) through metalio._speedups")
    bad += len(leaks)
sys.exit(1 if bad else 0)
EOF
if [[ $status -ne 0 ]]; then
    echo "== speedups (c) FAILED: pytest/valgrind exit status $status (99 = a memory error)"
    exit 1
fi
deactivate
echo "== speedups lane passed"
