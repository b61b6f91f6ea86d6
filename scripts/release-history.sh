#!/usr/bin/env bash
# The release workflow on a real history (README, "Update repository"): fetch the six
# consecutive versions of corpus/histories.json's NAME (pinned by sha256), publish them one
# after the other into a fresh repository (K bases each), serve it over HTTP on 127.0.0.1,
# update an install of every old version to the newest, and print what each client
# downloaded against the full bundle, the time of the last publication, and each client's
# peak RSS. Usage: scripts/release-history.sh [NAME] [K]   (default: rxjs-history 5)
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:-rxjs-history}
k=${2:-5}
python3 corpus/history.py "$name" >/dev/null
cargo build --release --quiet --bin bundelta
B="${CARGO_TARGET_DIR:-target}/release/bundelta"
case "$B" in /*) ;; *) B="$PWD/$B" ;; esac
data="corpus/data/$name"
mapfile -t versions < <(python3 -c "import json,sys; print('\n'.join(next(h for h in json.load(open('corpus/histories.json')) if h['name']==sys.argv[1])['versions']))" "$name")
work=$(mktemp -d)
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"' EXIT
"$B" keygen -o "$work/key" -q
"$B" release init "$work/repo" --name "$name" --key "$work/key" -q
last=$((${#versions[@]} - 1))
for i in "${!versions[@]}"; do
  v=${versions[$i]}
  t0=$(date +%s.%N)
  "$B" release add "$work/repo" "$v" "$data/$v" --key "$work/key" --bases "$k" --json > "$work/add-$v.json"
  t1=$(date +%s.%N)
  if [ "$i" -eq "$last" ]; then publish_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}'); fi
done
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$work/repo" >/dev/null 2>&1 &
server=$!
for _ in $(seq 50); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$port))" 2>/dev/null && break; sleep 0.1; done
new=${versions[$last]}
bundle_bytes=$("$B" release list "$work/repo" --pubkey "$work/key.pub" --json |
  python3 -c "import json,sys; print(json.load(sys.stdin)['releases'][-1]['bytes'])")
printf '\nrelease history %s (%d versions, K=%d): last publication (%s, %d bases) %ss\n' \
  "$name" "${#versions[@]}" "$k" "$new" "$([ "$last" -lt "$k" ] && echo "$last" || echo "$k")" "$publish_s"
printf '\n| client at | route | downloaded B | full blob B | %% of full | %% of bundle | client peak RSS MiB |\n|---|---|---|---|---|---|---|\n'
for i in "${!versions[@]}"; do
  [ "$i" -eq "$last" ] && continue
  v=${versions[$i]}
  cp -r "$data/$v" "$work/inst-$v"
  /usr/bin/time -f %M -o "$work/rss-$v" "$B" update "$work/inst-$v" --repo "http://127.0.0.1:$port" \
    --pubkey "$work/key.pub" --json > "$work/up-$v.json"
  diff -r "$work/inst-$v" "$data/$new" >/dev/null || { echo "error: $v did not reach $new" >&2; exit 1; }
  python3 - "$work/up-$v.json" "$(cat "$work/rss-$v")" "$bundle_bytes" "$v" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); rss = int(sys.argv[2]) / 1024; bundle = int(sys.argv[3])
route = " -> ".join([sys.argv[4]] + [s["to"] for s in r["steps"]]) if r["steps"][0]["from"] else "full " + r["target"]
print(f"| {sys.argv[4]} | {route} | {r['route_bytes']:,} | {r['full_bytes']:,} | "
      f"{100 * r['route_bytes'] / r['full_bytes']:.1f} | {100 * r['route_bytes'] / bundle:.2f} | {rss:.1f} |")
PY
done
printf '\nrepository: %s bytes in %s blobs; newest bundle %s bytes\n' \
  "$(du -sb "$work/repo" | cut -f1)" "$(ls "$work/repo/blobs" | wc -l)" "$bundle_bytes"
