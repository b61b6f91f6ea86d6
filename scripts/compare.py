#!/usr/bin/env python3
"""Side-by-side comparison of bundelta with peer delta tools.

Usage:
    python3 scripts/compare.py PAIR_DIR... [--bundelta PATH] [--json FILE]
                               [--peers NAME,...] [--repeat N] [--timeout S]
                               [--tmpdir DIR] [--list-peers]

A PAIR_DIR holds `old` and `new` (as made by corpus/fetch.py): two files, or
two directory trees. Every tool runs as a child process; for each we measure
patch bytes, diff wall / CPU (user+sys) seconds and peak RSS (GNU time's %M when
installed, else os.wait4's rusage), apply wall seconds and peak RSS, and check the applied output
byte-for-byte against `new`.

Directory pairs: the file-only peers diff a deterministic tar of each side
(sorted names, mtime 0, uid/gid 0, via python tarfile); bundelta gets the
directories themselves and its output tree is compared with `new` (names,
types, bytes, executable bits, symlink targets).

Peers (install them with scripts/install-peers.sh):
  bsdiff        bsdiff old new patch / bspatch old out patch
  xdelta3       xdelta3 -9 -S lzma -I 0 -B <pow2 >= old> -e -s old new patch
                (lzma secondary compression and an unlimited instruction
                buffer gave xdelta3's smallest patches on this corpus)
  zstd-19       zstd -19 --long=N --patch-from=old new -o patch
  zstd-3        zstd -3  --long=N --patch-from=old ...  (fast level)
                N = ceil(log2(max(old, new))) clamped to [10, 31]
  zstd-22       zstd --ultra -22 --long=N --patch-from=old  (not run by default)
  hdiffpatch    PyPI `hdiffpatch` is a Python module only (no hdiffz/hpatchz
                CLI): a `python3 -c` child calls hdiffpatch.diff(old, new,
                LzmaConfig(level=9, window=clamp(ceil(log2(size)), 23, 27)));
                its RSS includes the interpreter and the whole inputs in memory
  detools       detools create_patch -c lzma (sequential bsdiff) / apply_patch
                (not run by default: slow on multi-MB inputs)
  bundelta      BUNDELTA diff old new -o patch / BUNDELTA apply old patch -o out
                (only with --bundelta PATH; skipped if PATH does not exist)

Standard library only.
"""

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

DEFAULT_PEERS = ["bsdiff", "xdelta3", "zstd-19", "zstd-3", "hdiffpatch", "bundelta"]
ALL_PEERS = ["bsdiff", "xdelta3", "zstd-19", "zstd-3", "zstd-22", "hdiffpatch", "detools", "bundelta"]

HDIFF_CHILD = r"""
import sys, hdiffpatch
mode = sys.argv[1]
def rd(p):
    with open(p, 'rb') as f:
        return f.read()
if mode == 'diff':
    old, new, patch, window = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    data = hdiffpatch.diff(rd(old), rd(new), hdiffpatch.LzmaConfig(level=9, window=window),
                           validate=False)
    with open(patch, 'wb') as f:
        f.write(data)
else:
    old, patch, out = sys.argv[2], sys.argv[3], sys.argv[4]
    data = hdiffpatch.apply(rd(old), rd(patch))
    with open(out, 'wb') as f:
        f.write(data)
"""


# --------------------------------------------------------------------------
# measurement


def median_run(runs):
    """The run with the median wall time (the lower middle for an even count); its peak RSS
    is the largest seen over all runs."""
    ordered = sorted(runs, key=lambda r: r["wall_s"])
    mid = dict(ordered[(len(ordered) - 1) // 2])
    mid["maxrss_kib"] = max(r["maxrss_kib"] for r in runs)
    return mid


def run_measured(cmd, timeout, log_path):
    """Run cmd as a child; return dict(rc, wall_s, cpu_s, maxrss_kib, timed_out, log).

    Peak RSS comes from GNU time when it is installed: the rusage of a child forked from this
    Python process would count the interpreter pages copied before exec (about 20 MiB).
    """
    rss_file = log_path + ".rss"
    if os.path.exists("/usr/bin/time"):
        cmd = ["/usr/bin/time", "-f", "%M", "-o", rss_file] + list(cmd)
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)
        except OSError as e:
            return {"rc": None, "wall_s": 0.0, "cpu_s": 0.0, "maxrss_kib": 0,
                    "timed_out": False, "log": f"cannot start {cmd[0]}: {e}"}
        timed_out = threading.Event()

        def kill():
            timed_out.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            while True:
                try:
                    _, status, ru = os.wait4(proc.pid, 0)
                    break
                except InterruptedError:
                    continue
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    proc.returncode = rc  # we reaped it ourselves
    with open(log_path, "rb") as f:
        tail = f.read()[-2000:].decode("utf-8", "replace").strip()
    maxrss = ru.ru_maxrss
    try:
        with open(rss_file) as f:
            maxrss = int(f.read().split()[-1])
        os.unlink(rss_file)
    except (OSError, ValueError, IndexError):
        pass
    return {"rc": rc, "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime,
            "maxrss_kib": maxrss, "timed_out": timed_out.is_set(), "log": tail}


def files_equal(a, b):
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x = fa.read(1 << 20)
            y = fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def tree_diff(a, b):
    """First difference between two trees (None if equal): names, types, bytes, x-bits, links."""
    def listing(root):
        out = {}
        for dirpath, dirs, files in os.walk(root):
            dirs.sort()
            for n in dirs + sorted(files):
                p = os.path.join(dirpath, n)
                out[os.path.relpath(p, root)] = p
        return out
    la, lb = listing(a), listing(b)
    if set(la) != set(lb):
        only_a = sorted(set(la) - set(lb))[:3]
        only_b = sorted(set(lb) - set(la))[:3]
        return f"names differ (only in output: {only_a}, missing: {only_b})"
    for rel in sorted(la):
        pa, pb = la[rel], lb[rel]
        sa, sb = os.lstat(pa), os.lstat(pb)
        if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
            return f"type differs: {rel}"
        if stat.S_ISLNK(sa.st_mode):
            if os.readlink(pa) != os.readlink(pb):
                return f"symlink target differs: {rel}"
        elif stat.S_ISREG(sa.st_mode):
            if (sa.st_mode & 0o111) != (sb.st_mode & 0o111):
                return f"executable bits differ: {rel}"
            if not files_equal(pa, pb):
                return f"content differs: {rel}"
    return None


def deterministic_tar(src_dir, out_path):
    """Tar src_dir with sorted names, mtime 0, uid/gid 0, no user/group names."""
    def norm(ti):
        ti.mtime = 0
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        ti.mode &= 0o7777
        return ti
    with tarfile.open(out_path, "w", format=tarfile.GNU_FORMAT) as tf:
        for dirpath, dirs, files in os.walk(src_dir):
            dirs.sort()
            rel_dir = os.path.relpath(dirpath, src_dir)
            for n in sorted(dirs + files):
                p = os.path.join(dirpath, n)
                arc = os.path.normpath(os.path.join(rel_dir, n))
                ti = norm(tf.gettarinfo(p, arcname=arc))
                if ti.isfile():
                    with open(p, "rb") as f:
                        tf.addfile(ti, f)
                else:
                    tf.addfile(ti)
            # os.walk descends into dirs in the (sorted) order given


# --------------------------------------------------------------------------
# peers


def next_pow2(n):
    return 1 << max(0, (max(n, 1) - 1).bit_length())


def long_n(size):
    return min(31, max(10, math.ceil(math.log2(max(size, 2)))))


def python_module_cmd(module):
    import importlib.util
    try:
        if importlib.util.find_spec(module) is not None:
            return [sys.executable]
    except Exception:
        pass
    return None


def tool_version(cmd):
    try:
        out = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=30).stdout
        line = out.decode("utf-8", "replace").strip().splitlines()[0]
        m = re.search(r"v?(\d+(?:\.\d+)+)", line)
        return m.group(1) if m else line[:60]
    except Exception:
        return "?"


def deb_version(pkg):
    return tool_version(["dpkg-query", "-W", "-f=${Version}", pkg])


def py_version(dist):
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return "?"


def make_peer(name, args):
    """Return dict(name, desc, version, files_only, diff(o,n,p), apply(o,p,out)) or (None, reason)."""
    if name == "bsdiff":
        if not (shutil.which("bsdiff") and shutil.which("bspatch")):
            return None, "bsdiff/bspatch not installed"
        return {"name": name, "version": deb_version("bsdiff"), "files_only": True,
                "diff": lambda o, n, p, so, sn: ["bsdiff", o, n, p],
                "apply": lambda o, p, out, so, sn: ["bspatch", o, out, p]}, None
    if name == "xdelta3":
        if not shutil.which("xdelta3"):
            return None, "xdelta3 not installed"
        return {"name": name, "version": tool_version(["xdelta3", "-V"]), "files_only": True,
                "diff": lambda o, n, p, so, sn: ["xdelta3", "-9", "-S", "lzma", "-I", "0",
                                                 "-B", str(next_pow2(max(so, 1 << 20))),
                                                 "-e", "-f", "-s", o, n, p],
                "apply": lambda o, p, out, so, sn: ["xdelta3", "-d", "-f",
                                                    "-B", str(next_pow2(max(so, 1 << 20))),
                                                    "-s", o, p, out]}, None
    if name.startswith("zstd-"):
        if not shutil.which("zstd"):
            return None, "zstd not installed"
        level = name.split("-", 1)[1]
        lv = ["--ultra", "-" + level] if int(level) > 19 else ["-" + level]
        return {"name": name, "version": tool_version(["zstd", "-V"]), "files_only": True,
                "diff": lambda o, n, p, so, sn: ["zstd", "-q", "-f"] + lv + [
                    f"--long={long_n(max(so, sn))}", f"--patch-from={o}", n, "-o", p],
                "apply": lambda o, p, out, so, sn: ["zstd", "-q", "-f", "-d",
                                                    f"--long={long_n(max(so, sn))}",
                                                    f"--patch-from={o}", p, "-o", out]}, None
    if name == "hdiffpatch":
        py = python_module_cmd("hdiffpatch")
        if not py:
            return None, "python module hdiffpatch not installed"

        def window(so, sn):
            return str(min(27, max(23, math.ceil(math.log2(max(so, sn, 2))))))
        return {"name": name, "version": "py " + py_version("hdiffpatch"), "files_only": True,
                "diff": lambda o, n, p, so, sn: py + ["-c", HDIFF_CHILD, "diff", o, n, p,
                                                      window(so, sn)],
                "apply": lambda o, p, out, so, sn: py + ["-c", HDIFF_CHILD, "apply", o, p, out]}, None
    if name == "detools":
        py = python_module_cmd("detools")
        base = py + ["-m", "detools"] if py else ([shutil.which("detools")] if shutil.which("detools") else None)
        if not base:
            return None, "detools not installed"
        return {"name": name, "version": py_version("detools"), "files_only": True,
                "diff": lambda o, n, p, so, sn: base + ["create_patch", "-c", "lzma", o, n, p],
                "apply": lambda o, p, out, so, sn: base + ["apply_patch", o, p, out]}, None
    if name == "bundelta":
        if not args.bundelta:
            return None, "no --bundelta PATH given"
        exe = os.path.abspath(args.bundelta)
        if not os.path.isfile(exe) or not os.access(exe, os.X_OK):
            return None, f"{args.bundelta} does not exist (or is not executable)"
        return {"name": name, "version": tool_version([exe, "--version"]), "files_only": False,
                "diff": lambda o, n, p, so, sn: [exe, "diff", o, n, "-o", p],
                "apply": lambda o, p, out, so, sn: [exe, "apply", o, p, "-o", out]}, None
    return None, f"unknown peer {name!r}"


# --------------------------------------------------------------------------
# one pair


def size_of(path):
    if os.path.isfile(path):
        return os.path.getsize(path), 1
    total = files = 0
    for dirpath, _, names in os.walk(path):
        for n in names:
            p = os.path.join(dirpath, n)
            files += 1
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total, files


def remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def run_peer(peer, pair, work, args):
    res = {"peer": peer["name"], "version": peer["version"], "patch_bytes": None,
           "patch_pct_of_new": None, "diff_wall_s": None, "diff_cpu_s": None,
           "diff_maxrss_kib": None, "apply_wall_s": None, "apply_maxrss_kib": None,
           "verified": False, "error": None}
    if pair["type"] == "dir" and peer["files_only"]:
        old, new, so, sn = pair["old_tar"], pair["new_tar"], pair["old_tar_bytes"], pair["new_tar_bytes"]
        res["input"] = "tar"
    else:
        old, new, so, sn = pair["old"], pair["new"], pair["old_bytes"], pair["new_bytes"]
        res["input"] = pair["type"]
    patch = os.path.join(work, f"{peer['name']}.patch")
    out = os.path.join(work, f"{peer['name']}.out")
    log = os.path.join(work, f"{peer['name']}.log")
    res["diff_cmd"] = " ".join(peer["diff"](old, new, patch, so, sn)).replace(HDIFF_CHILD, "<script>")
    res["apply_cmd"] = " ".join(peer["apply"](old, patch, out, so, sn)).replace(HDIFF_CHILD, "<script>")
    try:
        runs = []
        for _ in range(args.repeat):
            remove(patch)
            r = run_measured(peer["diff"](old, new, patch, so, sn), args.timeout, log)
            if r["timed_out"] or r["rc"] != 0 or not os.path.isfile(patch):
                why = "timeout" if r["timed_out"] else f"exit {r['rc']}"
                res["error"] = f"diff failed ({why}): {r['log'][-300:]}"
                return res
            runs.append(r)
        best = median_run(runs)
        res["patch_bytes"] = os.path.getsize(patch)
        # relative to the new side's own bytes (file size, or sum of file sizes
        # of a tree) for every peer, so tar-based and tree-based peers compare
        res["patch_pct_of_new"] = 100.0 * res["patch_bytes"] / max(pair["new_bytes"], 1)
        res["diff_wall_s"], res["diff_cpu_s"], res["diff_maxrss_kib"] = (
            best["wall_s"], best["cpu_s"], best["maxrss_kib"])
        runs = []
        for _ in range(args.repeat):
            remove(out)
            r = run_measured(peer["apply"](old, patch, out, so, sn), args.timeout, log)
            if r["timed_out"] or r["rc"] != 0 or not os.path.lexists(out):
                why = "timeout" if r["timed_out"] else f"exit {r['rc']}"
                res["error"] = f"apply failed ({why}): {r['log'][-300:]}"
                return res
            runs.append(r)
        best = median_run(runs)
        res["apply_wall_s"], res["apply_maxrss_kib"] = best["wall_s"], best["maxrss_kib"]
        if os.path.isdir(new):
            problem = tree_diff(out, new) if os.path.isdir(out) else "output is not a directory"
        else:
            problem = None if (os.path.isfile(out) and files_equal(out, new)) else "output differs from new"
        res["verified"] = problem is None
        if problem:
            res["error"] = "VERIFY FAILED: " + problem
        return res
    finally:
        remove(patch)
        remove(out)
        remove(log)


def compare_pair(pair_dir, peers, args, tmp_root):
    name = os.path.basename(os.path.normpath(pair_dir))
    old, new = os.path.join(pair_dir, "old"), os.path.join(pair_dir, "new")
    if os.path.isfile(old) and os.path.isfile(new):
        ptype = "file"
    elif os.path.isdir(old) and os.path.isdir(new):
        ptype = "dir"
    else:
        raise SystemExit(f"{pair_dir}: needs `old` and `new`, both files or both directories")
    ob, of = size_of(old)
    nb, nf = size_of(new)
    pair = {"name": name, "dir": os.path.abspath(pair_dir), "type": ptype,
            "old": os.path.abspath(old), "new": os.path.abspath(new),
            "old_bytes": ob, "new_bytes": nb, "old_files": of, "new_files": nf}
    work = tempfile.mkdtemp(prefix=f"{name}-", dir=tmp_root)
    try:
        if ptype == "dir" and any(p["files_only"] for p in peers):
            pair["old_tar"] = os.path.join(work, "old.tar")
            pair["new_tar"] = os.path.join(work, "new.tar")
            deterministic_tar(old, pair["old_tar"])
            deterministic_tar(new, pair["new_tar"])
            pair["old_tar_bytes"] = os.path.getsize(pair["old_tar"])
            pair["new_tar_bytes"] = os.path.getsize(pair["new_tar"])
        results = []
        for peer in peers:
            print(f"  {name}: {peer['name']} ...", file=sys.stderr, flush=True)
            results.append(run_peer(peer, pair, work, args))
        pair["results"] = results
        return pair
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------
# output


def human(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_pair(pair):
    head = f"== {pair['name']} ({pair['type']} pair): old {human(pair['old_bytes'])}, new {human(pair['new_bytes'])}"
    if pair["type"] == "dir":
        head += (f" ({pair['old_files']} -> {pair['new_files']} files")
        if "new_tar_bytes" in pair:
            head += f"; tar {human(pair['old_tar_bytes'])} -> {human(pair['new_tar_bytes'])}"
        head += ")"
    print(head)
    rows = [("peer", "patch bytes", "% new", "diff s", "diff cpu s", "diff RSS MiB",
             "apply s", "apply RSS MiB", "ok")]
    for r in pair["results"]:
        rows.append((r["peer"] + (" (tar)" if r.get("input") == "tar" and pair["type"] == "dir" else ""),
                     fmt(r["patch_bytes"], ","), fmt(r["patch_pct_of_new"], ".2f"),
                     fmt(r["diff_wall_s"], ".2f"), fmt(r["diff_cpu_s"], ".2f"),
                     fmt(r["diff_maxrss_kib"] and r["diff_maxrss_kib"] / 1024, ".0f"),
                     fmt(r["apply_wall_s"], ".2f"),
                     fmt(r["apply_maxrss_kib"] and r["apply_maxrss_kib"] / 1024, ".0f"),
                     "yes" if r["verified"] else "NO"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        print("  ".join(cells))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for r in pair["results"]:
        if r["error"]:
            print(f"  ! {r['peer']}: {r['error']}")
    print()


def main(argv=None):
    ap = argparse.ArgumentParser(description="Compare bundelta with peer delta tools on corpus pairs.")
    ap.add_argument("pairs", nargs="*", metavar="PAIR_DIR", help="directory holding old and new")
    ap.add_argument("--bundelta", metavar="PATH", help="bundelta binary to include")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--peers", default=",".join(DEFAULT_PEERS),
                    help=f"comma-separated peers or 'all' (default: {','.join(DEFAULT_PEERS)}; "
                         f"known: {','.join(ALL_PEERS)})")
    ap.add_argument("--repeat", type=int, default=1, help="runs per step; the median wall time is reported (peak RSS: the largest)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per child process")
    ap.add_argument("--tmpdir", help="where the temporary directory goes (default: system temp)")
    ap.add_argument("--list-peers", action="store_true", help="show which peers are available and exit")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")

    wanted = ALL_PEERS if args.peers == "all" else [p.strip() for p in args.peers.split(",") if p.strip()]
    peers, skipped = [], []
    for name in wanted:
        peer, why = make_peer(name, args)
        if peer:
            peers.append(peer)
        else:
            skipped.append((name, why))
    for name, why in skipped:
        print(f"skipping {name}: {why}", file=sys.stderr)
    if args.list_peers:
        for p in peers:
            print(f"{p['name']:<11} {p['version']}")
        return 0
    if not args.pairs:
        ap.error("give at least one PAIR_DIR")
    if not peers:
        raise SystemExit("no peer available: run scripts/install-peers.sh")

    tmp_root = tempfile.mkdtemp(prefix="bundelta-compare-", dir=args.tmpdir)
    report = {"host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                       "python": platform.python_version()},
              "repeat": args.repeat,
              "peers": {p["name"]: p["version"] for p in peers},
              "skipped_peers": dict(skipped), "pairs": []}
    failures = 0
    try:
        for pd in args.pairs:
            pair = compare_pair(pd, peers, args, tmp_root)
            for k in ("old_tar", "new_tar"):
                pair.pop(k, None)
            print_pair(pair)
            report["pairs"].append(pair)
            failures += sum(1 for r in pair["results"] if not r["verified"])
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
