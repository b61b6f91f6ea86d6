#!/usr/bin/env python3
"""Fetch the bundelta benchmark corpus described in corpus/pairs.json.

Usage:
    python3 corpus/fetch.py [--data corpus/data] [--only NAME ...] [--list]
                            [--strict] [--keep-cache] [--force]
                            [--pairs FILE] [--pin]

Every archive is downloaded through the ordinary package client, by package
name and version (npm pack / pip download / apt-get download), verified
against the sha256 pinned in pairs.json, unpacked safely, and the selected
file or directory is placed as DATA/NAME/old and DATA/NAME/new.

Standard library only.
"""

import argparse
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
PAIRS_JSON = os.path.join(HERE, "pairs.json")
DEFAULT_DATA = os.path.join(HERE, "data")
STAMP = ".stamp"
KINDS = ("js-bundle", "executable", "shared-lib", "hashed-dir", "package-tree", "large-file",
         "archive")
ARCHIVE_EXTS = (".tgz", ".whl", ".deb", ".tar.gz")
SOURCES = ("npm", "pypi", "deb")
CLIENT_TIMEOUT = 3600  # seconds; the torch wheels are ~550 MB each


class ClientError(Exception):
    """The package client failed (registry unreachable, version gone, ...)."""


class IntegrityError(Exception):
    """A download does not match its pinned sha256, or an archive is unsafe."""


# --------------------------------------------------------------------------
# manifest


def load_pairs(path=PAIRS_JSON):
    with open(path, encoding="utf-8") as f:
        pairs = json.load(f)
    seen = set()
    for p in pairs:
        for key in ("name", "kind", "step", "source", "package", "old_version",
                    "new_version", "select"):
            # A pair with "whole": true is the downloaded archives themselves.
            if key == "select" and p.get("whole"):
                continue
            if not p.get(key):
                raise SystemExit(f"pairs.json: pair {p.get('name')!r} lacks {key!r}")
        if p["name"] in seen:
            raise SystemExit(f"pairs.json: duplicate pair name {p['name']!r}")
        seen.add(p["name"])
        if p["kind"] not in KINDS:
            raise SystemExit(f"pairs.json: {p['name']}: unknown kind {p['kind']!r}")
        if p["source"] not in SOURCES:
            raise SystemExit(f"pairs.json: {p['name']}: unknown source {p['source']!r}")
        if p["step"] not in ("small", "big"):
            raise SystemExit(f"pairs.json: {p['name']}: step must be small or big")
    return pairs


def archive_key(pair, side):
    """Identity of one downloaded archive (shared between pairs)."""
    version = pair[side + "_version"]
    key = [pair["source"], pair["package"], version]
    if pair["source"] == "pypi":
        if pair.get("dist") == "sdist":
            key += ["sdist"]
        else:
            key += [pair.get("platform", "manylinux2014_x86_64"),
                    pair.get("python_version", "3.11")]
    return tuple(key)


def cache_dir_for(cache_root, key):
    safe = "__".join(k.replace("/", "_").replace("@", "").replace(":", "_") for k in key)
    return os.path.join(cache_root, safe)


def stamp_for(pair):
    keys = ("source", "package", "old_version", "new_version", "old_sha256",
            "new_sha256", "select", "platform", "python_version")
    stamp = {k: pair.get(k) for k in keys}
    # Keys added later count only where a pair has them (older stamps stay valid).
    for k in ("whole", "dist"):
        if k in pair:
            stamp[k] = pair[k]
    return json.dumps(stamp, sort_keys=True)


def select_path(pair, side):
    return pair["select"].replace("{version}", pair[side + "_version"])


# --------------------------------------------------------------------------
# helpers


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def human(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return str(n)


def tree_size(path):
    """(bytes, files) of a file or directory tree; symlinks count 0 bytes."""
    if os.path.islink(path):
        return 0, 1
    if os.path.isfile(path):
        return os.path.getsize(path), 1
    total = files = 0
    for root, dirs, names in os.walk(path):
        for n in names:
            fp = os.path.join(root, n)
            files += 1
            if not os.path.islink(fp):
                total += os.path.getsize(fp)
    return total, files


def describe(path):
    if not os.path.lexists(path):
        return "-"
    size, files = tree_size(path)
    if os.path.isdir(path) and not os.path.islink(path):
        return f"{human(size)} ({files} files)"
    return human(size)


def run_client(cmd, cwd):
    try:
        proc = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=CLIENT_TIMEOUT)
    except FileNotFoundError:
        raise ClientError(f"client not found: {cmd[0]}")
    except subprocess.TimeoutExpired:
        raise ClientError(f"timed out after {CLIENT_TIMEOUT}s: {' '.join(cmd)}")
    if proc.returncode != 0:
        tail = proc.stdout.decode("utf-8", "replace").strip().splitlines()[-6:]
        raise ClientError(f"`{' '.join(cmd)}` exited {proc.returncode}:\n      "
                          + "\n      ".join(tail))


def pip_command():
    # the pip of the running interpreter, else whatever `pip` is on PATH
    try:
        import importlib.util
        if importlib.util.find_spec("pip") is not None:
            return [sys.executable, "-m", "pip"]
    except Exception:
        pass
    return ["pip"]


_apt_updated = False


def download(pair, side, dest_dir):
    """Download one archive with the package client into dest_dir (empty)."""
    global _apt_updated
    src, pkg, ver = pair["source"], pair["package"], pair[side + "_version"]
    if src == "npm":
        run_client(["npm", "pack", f"{pkg}@{ver}", "--loglevel=error", "--ignore-scripts"], dest_dir)
    elif src == "pypi" and pair.get("dist") == "sdist":
        # The source distribution (a .tar.gz written by the project's build backend).
        run_client(pip_command() + [
            "download", "--no-deps", "--no-binary=:all:", "--no-cache-dir",
            "--disable-pip-version-check", "--quiet",
            f"{pkg}=={ver}", "-d", dest_dir], dest_dir)
    elif src == "pypi":
        run_client(pip_command() + [
            "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
            "--disable-pip-version-check", "--quiet",
            "--platform", pair.get("platform", "manylinux2014_x86_64"),
            "--python-version", pair.get("python_version", "3.11"),
            f"{pkg}=={ver}", "-d", dest_dir], dest_dir)
    elif src == "deb":
        cmd = ["apt-get", "download", "-q", f"{pkg}={ver}"]
        try:
            run_client(cmd, dest_dir)
        except ClientError:
            if _apt_updated or os.geteuid() != 0:
                raise
            # the package lists may be missing or stale: refresh them once
            _apt_updated = True
            print("    (running apt-get update once and retrying)", flush=True)
            run_client(["apt-get", "update", "-q"], dest_dir)
            run_client(cmd, dest_dir)
    files = [f for f in os.listdir(dest_dir) if not f.startswith(".")]
    archives = [f for f in files if f.endswith(ARCHIVE_EXTS)]
    if len(archives) != 1:
        raise ClientError(f"expected exactly one archive from the client, got {files}")
    return os.path.join(dest_dir, archives[0])


def get_archive(pair, side, cache_root, pin):
    """Return the path of the verified archive in the cache (downloading it if needed)."""
    key = archive_key(pair, side)
    cdir = cache_dir_for(cache_root, key)
    want = (pair.get(side + "_sha256") or "").lower()
    existing = []
    if os.path.isdir(cdir):
        existing = [os.path.join(cdir, f) for f in os.listdir(cdir)
                    if f.endswith(ARCHIVE_EXTS)]
    if len(existing) == 1 and want and sha256_file(existing[0]) == want:
        return existing[0]
    shutil.rmtree(cdir, ignore_errors=True)
    os.makedirs(cache_root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".dl-", dir=cache_root)
    try:
        path = download(pair, side, tmp)
        got = sha256_file(path)
        if not want:
            if not pin:
                raise IntegrityError(
                    f"{pair['name']}: no {side}_sha256 pinned in pairs.json for "
                    f"{pair['package']} {pair[side + '_version']} (got {got}); "
                    f"run with --pin to record it")
            pair[side + "_sha256"] = got
            want = got
        if got != want:
            raise IntegrityError(
                f"REFUSING {pair['package']} {pair[side + '_version']} ({os.path.basename(path)}): "
                f"sha256 {got} does not match the pinned {want}. The registry served "
                f"different bytes than when the corpus was pinned; not using it.")
        os.rename(tmp, cdir)
        return os.path.join(cdir, os.path.basename(path))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------
# safe unpacking


def _check_rel(name):
    """Validate an archive member name; return its normalized relative path."""
    if name.startswith("/") or name.startswith("\\"):
        raise IntegrityError(f"absolute path in archive: {name!r}")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise IntegrityError(f"path escapes the destination: {name!r}")
    return "/".join(parts)


def _check_link_target(member_rel, target):
    if target.startswith("/"):
        raise IntegrityError(f"absolute symlink in archive: {member_rel} -> {target}")
    base = os.path.dirname(member_rel)
    resolved = os.path.normpath(os.path.join(base, target))
    if resolved == ".." or resolved.startswith("../"):
        raise IntegrityError(f"symlink escapes the destination: {member_rel} -> {target}")


def unpack_tgz(archive, dest):
    with tarfile.open(archive, "r:*") as tf:
        members = []
        for m in tf.getmembers():
            rel = _check_rel(m.name)
            if not rel:
                continue
            if m.issym():
                _check_link_target(rel, m.linkname)
            elif m.islnk():
                _check_rel(m.linkname)
            elif not (m.isfile() or m.isdir()):
                continue  # devices, fifos: never in a registry package we use
            if m.isdir():
                m.mode = (m.mode & 0o755) | 0o700
            elif m.isfile():
                m.mode = (m.mode & 0o755) | 0o600  # keeps the executable bits
            members.append(m)
        if hasattr(tarfile, "data_filter"):
            tf.extractall(dest, members=members, filter="data")
        else:
            tf.extractall(dest, members=members)
    # npm tarballs sometimes lack directory entries; make dirs traversable
    for root, dirs, _ in os.walk(dest):
        for d in dirs:
            p = os.path.join(root, d)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode | 0o700)


def unpack_zip(archive, dest):
    dest_abs = os.path.abspath(dest)
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            rel = _check_rel(info.filename)
            if not rel:
                continue
            out = os.path.join(dest_abs, rel)
            mode = (info.external_attr >> 16) & 0xFFFF
            if info.is_dir():
                os.makedirs(out, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(out), exist_ok=True)
            if stat.S_ISLNK(mode):
                target = zf.read(info).decode("utf-8")
                _check_link_target(rel, target)
                os.symlink(target, out)
                continue
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            perm = mode & 0o777
            os.chmod(out, (perm & 0o755) | 0o600 if perm else 0o644)


def unpack_deb(archive, dest):
    try:
        proc = subprocess.run(["dpkg-deb", "-x", archive, dest], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except FileNotFoundError:
        raise ClientError("dpkg-deb not found (needed to unpack .deb)")
    if proc.returncode != 0:
        raise ClientError("dpkg-deb -x failed: " + proc.stdout.decode("utf-8", "replace"))


def unpack(archive, dest):
    if archive.endswith(".tgz"):
        unpack_tgz(archive, dest)
    elif archive.endswith(".whl"):
        unpack_zip(archive, dest)
    elif archive.endswith(".deb"):
        unpack_deb(archive, dest)
    else:
        raise ClientError(f"don't know how to unpack {archive}")


def extract_selected(archive, sel, out, work_root):
    """Unpack archive, move the selected path to `out`."""
    work = tempfile.mkdtemp(prefix=".unpack-", dir=work_root)
    try:
        unpack(archive, work)
        rel = _check_rel(sel)
        src = os.path.join(work, rel)
        real_work = os.path.realpath(work)
        real_src = os.path.realpath(src)
        if not (real_src == real_work or real_src.startswith(real_work + os.sep)):
            raise IntegrityError(f"selected path {sel!r} resolves outside the archive")
        if not os.path.exists(real_src):
            raise IntegrityError(f"selected path {sel!r} not found in {os.path.basename(archive)}")
        # a selected symlink is resolved: the pair holds the real file or tree
        shutil.move(real_src, out)
        return "dir" if os.path.isdir(out) else "file"
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------
# main


def fetch_pair(pair, data, cache_root, pin):
    name = pair["name"]
    final = os.path.join(data, name)
    tmp = os.path.join(data, f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        kinds = []
        for side in ("old", "new"):
            archive = get_archive(pair, side, cache_root, pin)
            if pair.get("whole"):
                # The archive as it was published, not unpacked.
                shutil.copyfile(archive, os.path.join(tmp, side))
                kinds.append("file")
                continue
            kinds.append(extract_selected(archive, select_path(pair, side),
                                          os.path.join(tmp, side), data))
        if kinds[0] != kinds[1]:
            raise IntegrityError(f"old is a {kinds[0]} but new is a {kinds[1]}")
        with open(os.path.join(tmp, STAMP), "w", encoding="utf-8") as f:
            f.write(stamp_for(pair) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        return kinds[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_current(pair, data):
    d = os.path.join(data, pair["name"])
    try:
        with open(os.path.join(d, STAMP), encoding="utf-8") as f:
            stamp = f.read().strip()
    except OSError:
        return False
    return (stamp == stamp_for(pair) and os.path.lexists(os.path.join(d, "old"))
            and os.path.lexists(os.path.join(d, "new")))


def print_table(pairs, data):
    rows = [("name", "kind", "step", "source", "package", "old -> new", "old size", "new size")]
    for p in pairs:
        d = os.path.join(data, p["name"])
        have = is_current(p, data)
        rows.append((p["name"], p["kind"], p["step"], p["source"], p["package"],
                     f"{p['old_version']} -> {p['new_version']}",
                     describe(os.path.join(d, "old")) if have else "(not fetched)",
                     describe(os.path.join(d, "new")) if have else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def save_pins(pairs, path=PAIRS_JSON):
    with open(path, encoding="utf-8") as f:
        on_disk = json.load(f)
    by_name = {p["name"]: p for p in pairs}
    for p in on_disk:
        src = by_name.get(p["name"])
        if src:
            for side in ("old", "new"):
                if not p.get(side + "_sha256") and src.get(side + "_sha256"):
                    p[side + "_sha256"] = src[side + "_sha256"]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(on_disk, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA, help="output directory (default: corpus/data)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="fetch only these pairs")
    ap.add_argument("--list", action="store_true", help="list the pairs (and sizes if fetched), fetch nothing")
    ap.add_argument("--strict", action="store_true", help="exit non-zero if any pair failed")
    ap.add_argument("--keep-cache", action="store_true", help="keep downloaded archives in DATA/.cache")
    ap.add_argument("--force", action="store_true", help="re-fetch even if the stamp matches")
    ap.add_argument("--pairs", default=PAIRS_JSON, help="manifest (default: corpus/pairs.json)")
    ap.add_argument("--pin", action="store_true",
                    help="record the sha256 of archives that have none pinned yet into pairs.json")
    args = ap.parse_args(argv)

    pairs = load_pairs(args.pairs)
    if args.only:
        names = {p["name"] for p in pairs}
        unknown = [n for n in args.only if n not in names]
        if unknown:
            ap.error(f"unknown pair(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        pairs = [p for p in pairs if p["name"] in args.only]
    data = os.path.abspath(args.data)

    if args.list:
        print_table(pairs, data)
        return 0

    os.makedirs(data, exist_ok=True)
    cache_root = os.path.join(data, ".cache")
    todo = [p for p in pairs if args.force or not is_current(p, data)]
    # archives still needed by a later pair of this run are kept until then
    remaining = {}
    for p in todo:
        for side in ("old", "new"):
            k = archive_key(p, side)
            remaining[k] = remaining.get(k, 0) + 1

    failed, refused = [], []
    n = len(pairs)
    for i, p in enumerate(pairs, 1):
        label = f"[{i}/{n}] {p['name']:<22}"
        if p not in todo:
            print(f"{label} up to date   old {describe(os.path.join(data, p['name'], 'old'))}, "
                  f"new {describe(os.path.join(data, p['name'], 'new'))}", flush=True)
            continue
        print(f"{label} fetching {p['source']} {p['package']} "
              f"{p['old_version']} -> {p['new_version']} ...", flush=True)
        t0 = time.monotonic()
        try:
            kind = fetch_pair(p, data, cache_root, args.pin)
            d = os.path.join(data, p["name"])
            print(f"{label} ok ({kind} pair, {time.monotonic() - t0:.1f}s)   "
                  f"old {describe(os.path.join(d, 'old'))}, new {describe(os.path.join(d, 'new'))}",
                  flush=True)
        except ClientError as e:
            failed.append(p["name"])
            print(f"{label} FAILED (package client): {e}", flush=True)
        except IntegrityError as e:
            refused.append(p["name"])
            print(f"{label} REFUSED: {e}", flush=True)
        finally:
            for side in ("old", "new"):
                k = archive_key(p, side)
                remaining[k] -= 1
                if remaining[k] == 0 and not args.keep_cache:
                    shutil.rmtree(cache_dir_for(cache_root, k), ignore_errors=True)
        if args.pin:
            save_pins(pairs, args.pairs)
    if not args.keep_cache and os.path.isdir(cache_root) and not os.listdir(cache_root):
        os.rmdir(cache_root)

    print()
    print_table(pairs, data)
    if failed:
        print(f"\nfailed (package client): {', '.join(failed)}", file=sys.stderr)
    if refused:
        print(f"refused (integrity): {', '.join(refused)}", file=sys.stderr)
    if refused:
        return 2  # a hash mismatch or unsafe archive is never silently ignored
    if failed and args.strict:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
