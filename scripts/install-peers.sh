#!/usr/bin/env bash
# Install the peer delta tools that `cargo xtask bench` measures bundelta against.
# Idempotent: whatever is already installed is left alone. A peer whose
# registry cannot be reached is reported as skipped; the script still exits 0.
#
#   Debian: bsdiff (bsdiff/bspatch), xdelta3, zstd
#   PyPI:   hdiffpatch  (Python module only, no CLI: bench drives it
#                        through a small `python3 -c` child process)
#           detools     (sdist only: builds a C extension, needs gcc and the
#                        Python headers; gives the `detools` CLI)
#   crates: qbsdiff     (`cargo install qbsdiff --features cmd`: qbsdiff/qbspatch)
#
# Usage: bash scripts/install-peers.sh        (PYTHON=... to pick the interpreter)
set -u

PYTHON=${PYTHON:-python3}
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
fi

skipped=()
installed=()

# ---- Debian packages ------------------------------------------------------
declare -A DEB_CMD=([bsdiff]=bsdiff [xdelta3]=xdelta3 [zstd]=zstd)
missing_debs=()
for pkg in bsdiff xdelta3 zstd; do
    if dpkg -s "$pkg" >/dev/null 2>&1 && command -v "${DEB_CMD[$pkg]}" >/dev/null 2>&1; then
        echo "peer $pkg: already installed ($(command -v "${DEB_CMD[$pkg]}"))"
    else
        missing_debs+=("$pkg")
    fi
done
if [ ${#missing_debs[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "peer ${missing_debs[*]}: SKIPPED (no apt-get on this machine)"
        skipped+=("${missing_debs[@]}")
    else
        echo "apt-get update ..."
        if ! $SUDO apt-get update -q >/tmp/install-peers-apt.log 2>&1; then
            echo "  apt-get update failed (see /tmp/install-peers-apt.log); trying the existing package lists"
        fi
        for pkg in "${missing_debs[@]}"; do
            if DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "$pkg" \
                    >>/tmp/install-peers-apt.log 2>&1; then
                echo "peer $pkg: installed"
                installed+=("$pkg")
            else
                echo "peer $pkg: SKIPPED (apt-get install failed: Debian archive unreachable? see /tmp/install-peers-apt.log)"
                skipped+=("$pkg")
            fi
        done
    fi
fi

# ---- PyPI packages --------------------------------------------------------
if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    echo "peer hdiffpatch, detools: SKIPPED (no pip for $PYTHON)"
    skipped+=(hdiffpatch detools)
else
    pip_install() {  # $1 = package, $2 = import name
        if "$PYTHON" -c "import $2" >/dev/null 2>&1; then
            echo "peer $1: already installed ($("$PYTHON" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'))"
            return 0
        fi
        if "$PYTHON" -m pip install --disable-pip-version-check -q "$1" >/tmp/install-peers-pip-"$1".log 2>&1; then
            echo "peer $1: installed ($("$PYTHON" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'))"
            installed+=("$1")
        else
            echo "peer $1: SKIPPED (pip install failed: PyPI unreachable or build failed; see /tmp/install-peers-pip-$1.log)"
            skipped+=("$1")
        fi
    }
    pip_install hdiffpatch hdiffpatch
    # detools ships only an sdist with a C extension: it needs a compiler
    if ! command -v cc >/dev/null 2>&1 && ! "$PYTHON" -c "import detools" >/dev/null 2>&1; then
        echo "  (no C compiler: installing gcc for the detools build)"
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q gcc >>/tmp/install-peers-apt.log 2>&1 || true
    fi
    pip_install detools detools
fi

# ---- crates: qbsdiff (a Rust bsdiff with its own suffix sort) --------------------------
if command -v qbsdiff >/dev/null 2>&1 && command -v qbspatch >/dev/null 2>&1; then
    echo "peer qbsdiff: already installed ($(command -v qbsdiff))"
elif ! command -v cargo >/dev/null 2>&1; then
    echo "peer qbsdiff: SKIPPED (no cargo)"
    skipped+=(qbsdiff)
elif cargo install --quiet --locked qbsdiff --features cmd >/tmp/install-peers-cargo.log 2>&1 \
        || cargo install --quiet qbsdiff --features cmd >>/tmp/install-peers-cargo.log 2>&1; then
    echo "peer qbsdiff: installed ($(command -v qbsdiff || echo "in ~/.cargo/bin, not on PATH"))"
    installed+=(qbsdiff)
else
    echo "peer qbsdiff: SKIPPED (cargo install failed: crate registry unreachable? see /tmp/install-peers-cargo.log)"
    skipped+=(qbsdiff)
fi

echo
echo "peers available:"
for c in bsdiff bspatch xdelta3 zstd qbsdiff qbspatch; do
    printf '  %-10s %s\n' "$c" "$(command -v "$c" || echo '(missing)')"
done
if "$PYTHON" -c "import detools" >/dev/null 2>&1; then
    printf '  %-10s %s\n' detools "CLI, also as: $PYTHON -m detools"
else
    printf '  %-10s %s\n' detools "(missing)"
fi
if "$PYTHON" -c "import hdiffpatch" >/dev/null 2>&1; then
    printf '  %-10s %s\n' hdiffpatch "python module for $PYTHON (no CLI)"
else
    printf '  %-10s %s\n' hdiffpatch "(missing)"
fi
if [ ${#skipped[@]} -gt 0 ]; then
    echo "skipped: ${skipped[*]}"
fi
exit 0
