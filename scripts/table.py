#!/usr/bin/env python3
"""Render `cargo xtask bench --json` results as the README's Markdown table.

Usage: python3 scripts/table.py RESULTS.json [MORE.json ...]
"""
import json
import sys


def fmt_bytes(n):
    return f"{n:,}"


def main():
    # Later files override earlier ones, peer by peer, so a re-run of some peers can refine
    # an earlier full run.
    pairs = {}
    order = []
    for path in sys.argv[1:]:
        with open(path) as f:
            data = json.load(f)
        for pair in data["pairs"]:
            if pair["name"] not in pairs:
                order.append(pair["name"])
                pairs[pair["name"]] = dict(pair, res={})
            for r in pair["results"]:
                if r.get("patch_bytes") is not None:
                    pairs[pair["name"]]["res"][r["tool"]] = r
    rows = []
    for name in order:
        pair = pairs[name]
        if True:
            res = pair["res"]
            b = res.get("bundelta")
            if b is None:
                continue
            row = [pair["name"], f"{pair['new_bytes'] / 2**20:.1f} MiB"]
            for peer in ["bundelta", "bsdiff", "zstd-19", "hdiffpatch"]:
                r = res.get(peer)
                row.append(fmt_bytes(r["patch_bytes"]) if r else "-")
            # Against the smallest verified peer patch of the pair.
            peers = [(r["patch_bytes"], t) for t, r in res.items()
                     if t != "bundelta" and r.get("verified")]
            if peers:
                best, tool = min(peers)
                row.append(f"{100 * (b['patch_bytes'] / best - 1):+.1f}% ({tool})")
            else:
                row.append("-")
            for peer in ["bundelta", "hdiffpatch", "bsdiff"]:
                r = res.get(peer)
                row.append(f"{r['diff_wall_s']:.2f}" if r else "-")
            row.append(f"{b['apply_wall_s']:.2f}")
            row.append(f"{b['apply_maxrss_kib'] / 1024:.1f}")
            row.append("yes" if all(r.get("verified") for r in res.values()) else "NO")
            rows.append(row)
    head = ["pair", "new", "bundelta B", "bsdiff B", "zstd-19 B", "hdiffpatch B", "vs best peer",
            "diff s", "hdiffpatch s", "bsdiff s", "apply s", "apply RSS MiB", "verified"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
