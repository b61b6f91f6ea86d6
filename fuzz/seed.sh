#!/usr/bin/env bash
# Build seed corpora for the fuzz targets from real patches.
#
#   fuzz/seed.sh            # writes fuzz/corpus/<target>/ (git-ignored)
#
# Builds the release `bundelta` binary, recreates the fixed OLD file and OLD directory the
# targets apply against (fuzz/fixtures, plus the `link` symlink and the exec bit), derives a
# set of NEW versions from them, diffs each pair with several option sets and turns every
# patch into seeds:
#   apply_untrusted  mode byte 0x00 + patch, and 0x01 / 0x02 / 0x41 + patch body (trailer
#                    recomputed by the target; 0x41 also runs the in-place apply)
#   header_manifest  header + decompressed manifest (format 2: varint header, zstd or LZMA2)
#   roundtrip        [window][split u16][old][edit script]
#   dir_apply        a few flag combinations (codecs, frame splits, control blocks) followed by
#                    deterministic pseudo-random bytes
# The golden patches (corpus/golden/v2.1 to v2.6) are added to apply_untrusted as they are.
# Needs: cargo, python3, awk, coreutils.
set -euo pipefail

FUZZ="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$FUZZ")"
CORPUS="$FUZZ/corpus"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
BIN="$TARGET/release/bundelta"

(cd "$ROOT" && cargo build --release --quiet --bin bundelta)

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$CORPUS"/{apply_untrusted,header_manifest,roundtrip,dir_apply}

# --- OLD fixtures, exactly as fuzz/src/lib.rs materialises them ---------------------------
cp "$FUZZ/fixtures/old.txt" "$WORK/old.txt"
cp -R "$FUZZ/fixtures/old-dir" "$WORK/old-dir"
find "$WORK/old-dir" -type f -exec chmod 644 {} +
chmod 755 "$WORK/old-dir/bin/tool"
ln -s lib/core.js "$WORK/old-dir/link"

# Deterministic pseudo-random bytes: prng SEED COUNT
prng() {
    LC_ALL=C awk -v seed="$1" -v n="$2" 'BEGIN { srand(seed); for (i = 0; i < n; i++) printf "%c", int(rand() * 256) }'
}

# --- NEW single files -----------------------------------------------------------------------
mkdir -p "$WORK/new-file"
nf="$WORK/new-file"
sed 's/return/yield/g' "$WORK/old.txt" >"$nf/subst"
{ cat "$WORK/old.txt"; echo "export default function added() { return 42; }"; } >"$nf/append"
head -c 1500 "$WORK/old.txt" >"$nf/truncated"
{ head -c 700 "$WORK/old.txt"; prng 7 300; tail -c 1200 "$WORK/old.txt"; } >"$nf/splice"
: >"$nf/empty"
cp "$WORK/old.txt" "$nf/same"
prng 11 2000 >"$nf/random"
{ tail -c 1000 "$WORK/old.txt"; head -c 2000 "$WORK/old.txt"; } >"$nf/moved"

# --- NEW directories ------------------------------------------------------------------------
newdir() { rm -rf "$WORK/new-dir/$1"; mkdir -p "$WORK/new-dir"; cp -a "$WORK/old-dir" "$WORK/new-dir/$1"; echo "$WORK/new-dir/$1"; }
d=$(newdir same)
d=$(newdir edit); sed -i 's/const/let/g' "$d/lib/core.js"
d=$(newdir add); echo "new file" >"$d/NEWS"; mkdir -p "$d/lib/extra"; prng 3 500 >"$d/lib/extra/blob.bin"
d=$(newdir delete); rm "$d/empty" "$d/lib/util/strings.js"
d=$(newdir rename); mv "$d/lib/core.js" "$d/lib/core.7f3a9c.js"; sed -i 's/var/let/' "$d/lib/core.7f3a9c.js"; rm "$d/link"; ln -s lib/core.7f3a9c.js "$d/link"
d=$(newdir modes); chmod 644 "$d/bin/tool"; chmod 755 "$d/README.md"; mkdir "$d/emptydir"
d=$(newdir links); ln -s ../README.md "$d/lib/readme-link"; rm "$d/link"; ln -s bin/tool "$d/link"
d=$(newdir copy); cp "$d/lib/core.js" "$d/core-copy.js"; cp "$d/README.md" "$d/bin/README.md"
d=$(newdir mixed); sed -i 's/function/fn/g' "$d/lib/util/strings.js"; cat "$d/lib/core.js" >>"$d/bin/tool"; rm "$d/empty"; mkdir -p "$d/a/b/c"; echo deep >"$d/a/b/c/d.txt"

# --- diff every pair with several option sets --------------------------------------------
OPTS=("" "--level 1 --window-log 10" "--codec zstd --level 3 --chunk-size 64K --window-log 12" "--codec zstd")
PATCHES="$WORK/patches"
mkdir -p "$PATCHES"
for new in "$nf"/*; do
    for i in "${!OPTS[@]}"; do
        # shellcheck disable=SC2086
        "$BIN" diff -q -f ${OPTS[$i]} "$WORK/old.txt" "$new" -o "$PATCHES/file-$(basename "$new")-$i.bdp"
    done
done
for new in "$WORK"/new-dir/*; do
    for i in "${!OPTS[@]}"; do
        # shellcheck disable=SC2086
        "$BIN" diff -q -f ${OPTS[$i]} "$WORK/old-dir" "$new" -o "$PATCHES/dir-$(basename "$new")-$i.bdp"
    done
done
# Sanity: every seed patch applies to the fixtures.
for p in "$PATCHES"/*.bdp; do
    case "$(basename "$p")" in file-*) old="$WORK/old.txt" ;; *) old="$WORK/old-dir" ;; esac
    rm -rf "$WORK/out"
    "$BIN" apply -q "$old" "$p" -o "$WORK/out"
done
for v in v2.1 v2.2 v2.3 v2.4 v2.5 v2.6; do
    for f in "$ROOT"/corpus/golden/$v/*.bdp; do
        [ -e "$f" ] && cp "$f" "$PATCHES/golden-$v-$(basename "$f")"
    done
done

# --- turn patches into seeds ----------------------------------------------------------------
# header_manifest: the format-2 header as it is, then the manifest decompressed (a zstd frame,
# or a raw LZMA2 stream with flag bit 1, or stored when manifest_len == manifest_raw_len).
header_manifest_seed() {
    python3 - "$1" "$2" <<'PY'
import lzma, subprocess, sys
b = open(sys.argv[1], "rb").read()
pos = 6
def varint():
    global pos
    v = shift = 0
    while True:
        c = b[pos]; pos += 1
        v |= (c & 0x7F) << shift; shift += 7
        if c < 0x80:
            return v
flags = varint()
window_log = b[pos]; pos += 4
mlen, rawlen = varint(), varint()
for _ in range(4):
    varint()
m = b[pos:pos + mlen]
if mlen != rawlen:
    if flags & 2:
        dict_size = max(1 << window_log, 4096)
        m = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": dict_size}]).decompress(m)
    else:
        m = subprocess.run(["zstd", "-dq", "-c"], input=m, stdout=subprocess.PIPE, check=True).stdout
open(sys.argv[2], "wb").write(b[:pos] + m)
PY
}
for p in "$PATCHES"/*.bdp; do
    name="$(basename "$p" .bdp)"
    len=$(stat -c %s "$p")
    body="$WORK/body"
    head -c $((len - 32)) "$p" >"$body"
    { printf '\x00'; cat "$p"; } >"$CORPUS/apply_untrusted/$name-raw"
    { printf '\x01'; cat "$body"; } >"$CORPUS/apply_untrusted/$name-trailer"
    { printf '\x02'; cat "$body"; } >"$CORPUS/apply_untrusted/$name-fixlen"
    { printf '\x41'; cat "$body"; } >"$CORPUS/apply_untrusted/$name-inplace"
    header_manifest_seed "$p" "$CORPUS/header_manifest/$name" ||
        echo "note: no header_manifest seed from $name" >&2
done

# roundtrip: [window][split u16 LE][old][script]; script ops are (op, n) byte pairs.
i=0
for win in '\x0b' '\x02' '\x00'; do
    for split in '\x00\x04' '\x00\x02' '\x80\x00'; do
        {
            printf "$win$split"
            head -c 2048 "$WORK/old.txt"
            # copy, insert, skip, repeat, flip, copy rest
            printf '\x08\x10\x02\x05hello\x03\x20\x05\x08\x03\x06\x11\x07\x00'
            prng "$i" 64
        } >"$CORPUS/roundtrip/seed-$i"
        i=$((i + 1))
    done
done

# dir_apply: flag bytes (sorted + parents + honest digest/base, with variations) then bytes.
i=0
for f1 in '\x8b' '\x8f' '\xab' '\xcb' '\x9b' '\x0b' '\x83'; do
    for seed in 1 2 3; do
        # second flag byte: zstd (or raw), LZMA2, bzip2, split LZMA2 frames,
        # per-stream codecs with multi-block controls, stored manifest
        for f2 in '\x00' '\x04' '\x08' '\x14' '\x2c' '\x80'; do
            { printf "$f1$f2"; prng $((i * 7 + seed)) 200; } >"$CORPUS/dir_apply/seed-$i-$seed-$(printf "$f2" | od -An -tx1 | tr -d ' ')"
        done
    done
    i=$((i + 1))
done

# archive: [split u16 LE][old][new], a zip pair (deflated entries, a zip stored inside) and a
# two-member gzip pair, as committed in regressions/archive.
mkdir -p "$CORPUS/archive"
cp "$FUZZ"/regressions/archive/* "$CORPUS/archive/"

for t in apply_untrusted header_manifest roundtrip dir_apply archive; do
    echo "$t: $(find "$CORPUS/$t" -type f | wc -l) seeds"
done
