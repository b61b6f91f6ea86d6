#!/usr/bin/env python3
"""Serve a directory over HTTP/1.1 on 127.0.0.1 with Range requests (which Python's
http.server lacks), to try `bundelta update` against a local repository. With
--drop-after N --drops K, the first K responses under blobs/ are cut after N body bytes
(the connection closed mid-body), to watch the client resume.

Usage: python3 scripts/serve.py DIR [--port 8080] [--drop-after N --drops K]
Standard library only; not a production server (use any web server or CDN for that).
"""

import argparse
import http.server
import os
import threading


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--drop-after", type=int, default=None, metavar="N")
    ap.add_argument("--drops", type=int, default=0, metavar="K")
    args = ap.parse_args()
    root = os.path.realpath(args.dir)
    state = {"drops": args.drops}
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):
            print("serve: " + (fmt % a), flush=True)

        def do_GET(self):
            rel = self.path.split("?")[0].lstrip("/")
            path = os.path.realpath(os.path.join(root, rel))
            if not path.startswith(root + os.sep) or not os.path.isfile(path):
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            with open(path, "rb") as f:
                body = f.read()
            total, start = len(body), 0
            rng = self.headers.get("Range", "")
            if rng.startswith("bytes=") and rng.endswith("-") and rng[6:-1].isdigit():
                start = int(rng[6:-1])
                if start >= total:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{total}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
            else:
                self.send_response(200)
            out = body[start:]
            self.send_header("Content-Length", str(len(out)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Connection", "close")
            self.end_headers()
            cut = None
            with lock:
                if rel.startswith("blobs/") and state["drops"] > 0 and args.drop_after is not None:
                    state["drops"] -= 1
                    cut = args.drop_after
            if cut is not None and cut < len(out):
                self.wfile.write(out[:cut])
                self.wfile.flush()
                print(f"serve: dropped the connection after {cut} of {len(out)} bytes", flush=True)
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(out)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"serving {root} at http://127.0.0.1:{args.port}/", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
