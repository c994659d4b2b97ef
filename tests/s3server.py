"""A real S3 API server on loopback for the tests and benchmarks: moto's server app behind a request counter.

    python tests/s3server.py PORT          serve until killed
    GET  http://127.0.0.1:PORT/_requests   {"GET": n, "PUT": n, ...} counted since start (or the last reset)
    POST http://127.0.0.1:PORT/_requests   the same, then reset the counts (and the areas')
    GET  http://127.0.0.1:PORT/_areas      requests by the store area they touched: {"nodes": n, "tune": n, ...}

`S3Server` starts it as a child process of the caller (so a test stops exactly what it started) and hands out
store URIs in pyarrow's documented form: ``s3://bucket/prefix?endpoint_override=127.0.0.1:PORT&scheme=http``.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter

BUCKET = "sweeper-test"
# moto accepts any credentials; pyarrow needs some, and must not look for EC2 instance metadata
ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
       "AWS_EC2_METADATA_DISABLED": "true"}


class _Counting:
    def __init__(self, app):
        self.app, self.counts, self.areas, self.lock = app, Counter(), Counter(), threading.Lock()

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path in ("/_requests", "/_areas"):
            with self.lock:
                body = json.dumps(dict(self.counts if path == "/_requests" else self.areas)).encode()
                if environ["REQUEST_METHOD"] == "POST":
                    self.counts.clear()
                    self.areas.clear()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        parts = path.strip("/").split("/")  # bucket, store prefix, area, ... (a listing names it in the query)
        if len(parts) < 3:
            query = urllib.parse.parse_qs(environ.get("QUERY_STRING", "")).get("prefix", [""])[0].split("/")
            parts = parts[:1] + query
        area = parts[2] if len(parts) > 2 and parts[2] else "(store root)"
        with self.lock:
            self.counts[environ["REQUEST_METHOD"]] += 1
            self.areas[area] += 1
        return self.app(environ, start_response)


def serve(port: int) -> None:
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    app = _Counting(DomainDispatcherApplication(create_backend_app))
    make_server("127.0.0.1", port, app, threaded=True).serve_forever()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """The server as a child process, with one bucket; ``uri()`` gives a fresh store URI under it."""

    def __init__(self):
        os.environ.update(ENV)  # this process and everything it starts (Ray heads, CLI runs) reach the server
        self.port = _free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while True:
            try:
                self.requests()
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the S3 test server did not start on port {self.port}")
                time.sleep(0.1)
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(endpoint_override=self.endpoint, scheme="http", allow_bucket_creation=True)
        fs.create_dir(BUCKET)

    def uri(self, prefix: str | None = None) -> str:
        prefix = prefix or uuid.uuid4().hex[:12]
        return f"s3://{BUCKET}/{prefix}?endpoint_override={self.endpoint}&scheme=http"

    def requests(self, reset: bool = False, what: str = "_requests") -> dict:
        req = urllib.request.Request(f"http://{self.endpoint}/{what}", method="POST" if reset else "GET")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
