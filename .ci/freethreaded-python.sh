#!/usr/bin/env bash
# Build, or reuse, a free-threaded CPython 3.13 ("3.13t", configured with
# --disable-gil) in a fixed directory, for the free-threaded CI lane.
#
# No registry ships a free-threaded interpreter for this machine, but Debian's
# trixie source package python3.13 carries the upstream 3.13.5 tarball.  It is
# fetched through a sources file, list directory and cache of this script's
# own, so the machine's apt configuration and lists are never touched; the
# mirror is the one the machine's own sources already name.
#
# Idempotent: when $PREFIX/bin/python3.13t exists and has sys._is_gil_enabled,
# nothing is built.  Needs root (apt-get, /opt).  Prints every step.
#
# Usage: bash .ci/freethreaded-python.sh        (prints the interpreter path last)
set -euo pipefail

PREFIX=${METALIO_FT_PREFIX:-/opt/metalio-python3.13t}
PYTHON=$PREFIX/bin/python3.13t
VERSION=3.13.5
WORK=${METALIO_FT_WORK:-/var/tmp/metalio-python3.13t-build}
APT_LISTS=/var/lib/metalio-apt-lists
APT_CACHE=/var/cache/metalio-apt
APT_SOURCES=$APT_CACHE/trixie-src.list

say() { echo "== freethreaded-python: $*" >&2; }

usable() {
    [[ -x $PYTHON ]] &&
        "$PYTHON" -c 'import sys; sys.exit(not hasattr(sys, "_is_gil_enabled"))' 2>/dev/null &&
        "$PYTHON" -m pip --version >/dev/null 2>&1
}

if usable; then
    say "reusing $PYTHON ($("$PYTHON" -VV | head -1))"
    echo "$PYTHON"
    exit 0
fi

if [[ $(id -u) != 0 ]]; then
    say "needs root (apt-get and $PREFIX); run as root" >&2
    exit 1
fi

# Build dependencies: a compiler and the headers of the stdlib modules the
# suite relies on (ssl, zlib, ctypes, bz2, lzma, readline, sqlite3 kept for a
# complete stdlib).  Tk is not needed.
packages=(build-essential pkg-config xz-utils dpkg-dev libssl-dev zlib1g-dev
          libffi-dev libbz2-dev liblzma-dev libreadline-dev libsqlite3-dev
          libncurses-dev uuid-dev libgdbm-dev)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' ||
        missing+=("$package")
done
if ((${#missing[@]})); then
    say "installing build dependencies: ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    say "build dependencies already installed"
fi

mkdir -p "$WORK"
tarball=$WORK/python3.13_$VERSION.orig.tar.xz
if [[ ! -s $tarball ]]; then
    # The Debian mirror the machine already uses, read from its own sources.
    mirror=$(grep -hoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
             awk '{print $2}' | grep -v -- '-security' | grep -E '/debian/?$' | head -1 || true)
    if [[ -z $mirror ]]; then
        say "no Debian mirror found in /etc/apt/sources.list{,.d}" >&2
        exit 1
    fi
    say "fetching trixie's python3.13 source package from $mirror (own lists in $APT_LISTS)"
    mkdir -p "$APT_CACHE"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" >"$APT_SOURCES"
    mkdir -p "$APT_LISTS/partial" "$APT_CACHE/archives/partial"
    apt_own=(-o Dir::Etc::sourcelist="$APT_SOURCES" -o Dir::Etc::sourceparts=-
             -o Dir::State::Lists="$APT_LISTS" -o Dir::Cache="$APT_CACHE"
             -o APT::Get::List-Cleanup=0)
    apt-get "${apt_own[@]}" update -q
    # _apt must be able to write there, or apt warns and downloads unsandboxed.
    chown _apt "$WORK" 2>/dev/null || true
    (cd "$WORK" && apt-get "${apt_own[@]}" source --download-only python3.13)
    if [[ ! -s $tarball ]]; then
        say "the source package did not bring $tarball:" >&2
        ls -l "$WORK" >&2
        exit 1
    fi
else
    say "reusing downloaded $tarball"
fi

src=$WORK/Python-$VERSION
say "unpacking into $src"
rm -rf "$src"
tar -C "$WORK" -xJf "$tarball"
cd "$src"
say "configure --disable-gil --prefix=$PREFIX"
./configure --disable-gil --prefix="$PREFIX" --with-ensurepip=no >"$WORK/configure.log" 2>&1 ||
    { tail -40 "$WORK/configure.log" >&2; exit 1; }
say "make -j2 (a few minutes on 2 idle cores, up to ~25 when busy; log in $WORK/make.log)"
make -j2 >"$WORK/make.log" 2>&1 || { tail -60 "$WORK/make.log" >&2; exit 1; }
say "make install"
make install >"$WORK/install.log" 2>&1 || { tail -40 "$WORK/install.log" >&2; exit 1; }
say "ensurepip"
"$PYTHON" -m ensurepip >/dev/null
"$PYTHON" -c 'import sys, ssl, zlib, ctypes, bz2, lzma; assert hasattr(sys, "_is_gil_enabled"); print(sys.version)' >&2
if ! usable; then
    say "$PYTHON was installed but is not usable" >&2
    exit 1
fi
cd /
rm -rf "$src"
say "built $PYTHON"
echo "$PYTHON"
