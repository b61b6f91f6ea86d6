#!/usr/bin/env bash
# The main job on real data: fetch real version pairs (pinned by sha256), diff them, apply the
# patches with the bounded-memory applier, verify, and compare with bsdiff and zstd --patch-from
# when they are installed. Usage: scripts/demo.sh [PAIR...]   (default: three small pairs)
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=("$@")
[ ${#pairs[@]} -gt 0 ] || pairs=(js-bundle-small shared-lib-small hashed-dir-small)
python3 corpus/fetch.py --only "${pairs[@]}"
cargo build --release --quiet
B="${CARGO_TARGET_DIR:-target}/release/bundelta"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '\n%-20s %12s %12s %8s %8s %8s %11s %12s %12s\n' pair new_bytes patch_bytes pct diff_s apply_s apply_rss bsdiff zstd-19
for p in "${pairs[@]}"; do
  d=corpus/data/$p
  new_bytes=$(du -sb "$d/new" | cut -f1)
  t0=$(date +%s.%N)
  $B diff "$d/old" "$d/new" -o "$work/$p.bdp" -q
  t1=$(date +%s.%N)
  /usr/bin/time -f %M -o "$work/rss" $B apply "$d/old" "$work/$p.bdp" -o "$work/$p.out" -q
  t2=$(date +%s.%N)
  $B verify "$work/$p.bdp" --old "$d/old" -q
  if [ -d "$d/new" ]; then diff -r --no-dereference "$work/$p.out" "$d/new" >/dev/null; else cmp -s "$work/$p.out" "$d/new"; fi
  size=$(stat -c %s "$work/$p.bdp")
  bs=-; zs=-
  if [ -f "$d/new" ] && command -v bsdiff >/dev/null; then bsdiff "$d/old" "$d/new" "$work/b" && bs=$(stat -c %s "$work/b"); fi
  if [ -f "$d/new" ] && command -v zstd >/dev/null; then
    wl=$(awk -v a="$(stat -c %s "$d/old")" -v b="$new_bytes" 'BEGIN{m=a>b?a:b; n=10; while (2^n < m && n < 31) n++; print n}')
    zstd -q -f -19 --long="$wl" --patch-from="$d/old" "$d/new" -o "$work/z" 2>/dev/null && zs=$(stat -c %s "$work/z"); fi
  printf '%-20s %12s %12s %7.2f%% %8.2f %8.2f %8s KB %12s %12s\n' "$p" "$new_bytes" "$size" \
    "$(awk "BEGIN{print 100*$size/$new_bytes}")" "$(awk "BEGIN{print $t1-$t0}")" "$(awk "BEGIN{print $t2-$t1}")" \
    "$(cat "$work/rss")" "$bs" "$zs"
done
echo "all outputs verified identical to NEW"
