#!/usr/bin/env bash
# The clients end to end. The C API: build the static library and the C example
# (capi/examples/apply.c) against it, check that the committed header is what cbindgen makes
# of capi/src/lib.rs (when cbindgen is installed), then apply real corpus patches through the
# example, under AddressSanitizer + UBSan and under valgrind (any leak or memory error fails),
# from a file, from standard input and from a TCP socket; a damaged patch and a wrong OLD must
# be refused with nothing left. The Rust client: examples/apply_socket.rs applies the same
# patches read from a TCP socket.
#
#   bash capi/test.sh [PAIR ...]    (default: the corpus pairs below; fetched when missing)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

FILE_PAIRS=(executable-small js-bundle-small archive-jar-small archive-wheel-small)
DIR_PAIRS=(package-tree-small)
if [ $# -gt 0 ]; then FILE_PAIRS=("$@"); DIR_PAIRS=(); fi

cargo build --release --quiet -p bundelta-capi
cargo build --release --quiet --bin bundelta --example apply_socket
BD="$TARGET/release/bundelta"
RUST_CLIENT="$TARGET/release/examples/apply_socket"

# Serve FILE to one TCP connection on 127.0.0.1; the port is written to PORTFILE.
serve_once() { # FILE PORTFILE
    python3 - "$1" "$2" <<'PY' &
import socket, sys
data = open(sys.argv[1], "rb").read()
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(1)
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(str(s.getsockname()[1]))
import os
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
c, _ = s.accept()
c.sendall(data)
c.close()
PY
    while [ ! -s "$2" ]; do sleep 0.05; done
}
LIB="$TARGET/release/libbundelta_capi.a"

if command -v cbindgen >/dev/null; then
    cbindgen --quiet --config capi/cbindgen.toml --crate bundelta-capi --output "$WORK/bundelta.h"
    diff -u capi/include/bundelta.h "$WORK/bundelta.h" ||
        { echo "capi/include/bundelta.h is stale: regenerate it (see capi/cbindgen.toml)" >&2; exit 1; }
    echo "header: up to date with cbindgen"
else
    echo "note: cbindgen not installed; the committed header is used unchecked"
fi

CFLAGS=(-std=c11 -Wall -Wextra -Werror -g -I capi/include)
LIBS=("$LIB" -lpthread -ldl -lm)
cc "${CFLAGS[@]}" -O1 -fsanitize=address,undefined -fno-omit-frame-pointer \
    capi/examples/apply.c "${LIBS[@]}" -o "$WORK/apply-asan"
cc "${CFLAGS[@]}" -O2 capi/examples/apply.c "${LIBS[@]}" -o "$WORK/apply"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
export UBSAN_OPTIONS=halt_on_error=1
VG=(valgrind --quiet --leak-check=full --show-leak-kinds=definite,indirect
    --errors-for-leak-kinds=definite,indirect --error-exitcode=3)

missing=()
for p in "${FILE_PAIRS[@]}" "${DIR_PAIRS[@]}"; do
    [ -e "corpus/data/$p/new" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    python3 corpus/fetch.py --only "${missing[@]}"
fi

check_refusal() { # what, exit status, output path
    if [ "$2" -ne 1 ] || [ -e "$3" ]; then
        echo "FAIL: $1: exit $2 (want 1), output left: $([ -e "$3" ] && echo yes || echo no)" >&2
        exit 1
    fi
}

for p in "${FILE_PAIRS[@]}"; do
    old="corpus/data/$p/old" new="corpus/data/$p/new" patch="$WORK/$p.bdp"
    "$BD" diff -q "$old" "$new" -o "$patch"
    "$WORK/apply-asan" "$old" "$patch" "$WORK/$p.1" >/dev/null
    cmp "$WORK/$p.1" "$new"
    "$WORK/apply-asan" "$old" - "$WORK/$p.2" <"$patch" >/dev/null
    cmp "$WORK/$p.2" "$new"
    "${VG[@]}" "$WORK/apply" "$old" "$patch" "$WORK/$p.3" >/dev/null
    cmp "$WORK/$p.3" "$new"
    # From a TCP socket: the C example (the socket as its standard input) and the Rust one.
    rm -f "$WORK/port"
    serve_once "$patch" "$WORK/port"
    exec 3<>"/dev/tcp/127.0.0.1/$(cat "$WORK/port")"
    "$WORK/apply-asan" "$old" - "$WORK/$p.6" <&3 >/dev/null
    exec 3<&-
    wait
    cmp "$WORK/$p.6" "$new"
    rm -f "$WORK/port"
    serve_once "$patch" "$WORK/port"
    "$RUST_CLIENT" "$old" "127.0.0.1:$(cat "$WORK/port")" "$WORK/$p.7" >/dev/null
    wait
    cmp "$WORK/$p.7" "$new"
    # Damaged at the end (only the checksum shows it) and the wrong OLD: refused, no output.
    cp "$patch" "$WORK/bad.bdp"
    printf '\x00' | dd of="$WORK/bad.bdp" bs=1 seek=$(( $(stat -c %s "$patch") - 1 )) conv=notrunc status=none
    set +e
    "$WORK/apply-asan" "$old" "$WORK/bad.bdp" "$WORK/$p.4" 2>"$WORK/err"; st=$?
    set -e
    check_refusal "$p: damaged trailer" "$st" "$WORK/$p.4"
    grep -q "checksum" "$WORK/err" || { cat "$WORK/err"; exit 1; }
    set +e
    "${VG[@]}" "$WORK/apply" "$new" "$patch" "$WORK/$p.5" 2>"$WORK/err"; st=$?
    set -e
    check_refusal "$p: wrong OLD" "$st" "$WORK/$p.5"
    grep -q "wrong old\|differs\|size is" "$WORK/err" || { cat "$WORK/err"; exit 1; }
    echo "capi: $p: $(stat -c %s "$patch") byte patch applied through callbacks (file, stdin, socket; ASan, valgrind) and by the Rust socket client; damaged and wrong-OLD refused"
done
for p in "${DIR_PAIRS[@]}"; do
    old="corpus/data/$p/old" new="corpus/data/$p/new" patch="$WORK/$p.bdp"
    "$BD" diff -q "$old" "$new" -o "$patch"
    "${VG[@]}" "$WORK/apply" --files "$old" "$patch" "$WORK/$p.d" >/dev/null
    diff -r "$WORK/$p.d" "$new"
    rm -f "$WORK/port"
    serve_once "$patch" "$WORK/port"
    "$RUST_CLIENT" "$old" "127.0.0.1:$(cat "$WORK/port")" "$WORK/$p.r" >/dev/null
    wait
    diff -r "$WORK/$p.r" "$new"
    echo "capi: $p: directory patch applied by paths (C, valgrind) and from a socket (Rust)"
done
echo "capi: ok"
