#!/usr/bin/env python3
"""Fetch a release history described in corpus/histories.json: consecutive versions of one
package, each downloaded with the ordinary package client, checked against its pinned
sha256, unpacked safely (the same code as fetch.py), and placed as DATA/NAME/VERSION.

Usage:
    python3 corpus/history.py NAME [--data corpus/data] [--pin]

Standard library only.
"""

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fetch  # noqa: E402

HISTORIES = os.path.join(fetch.HERE, "histories.json")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name")
    ap.add_argument("--data", default=fetch.DEFAULT_DATA)
    ap.add_argument("--pin", action="store_true",
                    help="record the sha256 of versions that have none pinned yet")
    args = ap.parse_args(argv)
    with open(HISTORIES, encoding="utf-8") as f:
        histories = json.load(f)
    h = next((x for x in histories if x["name"] == args.name), None)
    if h is None:
        ap.error(f"unknown history {args.name}; known: {', '.join(x['name'] for x in histories)}")
    data = os.path.abspath(args.data)
    root = os.path.join(data, h["name"])
    cache_root = os.path.join(data, ".cache")
    os.makedirs(root, exist_ok=True)
    for v in h["versions"]:
        out = os.path.join(root, v)
        stamp = os.path.join(root, f".{v}.stamp")
        want = h["sha256"].get(v, "")
        current = os.path.exists(stamp) and open(stamp).read().strip() == want
        if os.path.exists(out) and want and current:
            print(f"{h['name']} {v}: up to date", flush=True)
            continue
        # One side of a pseudo-pair, so that fetch.py's download and checks apply as they are.
        pair = {"name": h["name"], "source": h["source"], "package": h["package"],
                "old_version": v, "old_sha256": want}
        try:
            archive = fetch.get_archive(pair, "old", cache_root, args.pin)
        except (fetch.ClientError, fetch.IntegrityError) as e:
            print(f"{h['name']} {v}: FAILED: {e}", file=sys.stderr)
            return 1
        if not want:
            h["sha256"][v] = pair["old_sha256"]
            with open(HISTORIES, "w", encoding="utf-8") as f:
                json.dump(histories, f, indent=2)
                f.write("\n")
        shutil.rmtree(out, ignore_errors=True)
        fetch.extract_selected(archive, h["select"], out, data)
        with open(stamp, "w") as f:
            f.write(h["sha256"][v] + "\n")
        shutil.rmtree(os.path.dirname(archive), ignore_errors=True)
        print(f"{h['name']} {v}: {fetch.describe(out)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
