"""A small HTTP server for tests and benchmarks: serves a folder on
127.0.0.1, honours ``Range`` requests as cloud storage does, and logs every
response's bytes (before sending it), so a test can assert what a remote read fetched.

It runs in a process of its own (GDAL holds the caller's interpreter while
it reads, so a server thread in the same process could not answer), listens
on the loopback address only, answers at most ``max_requests`` requests,
and exits by itself after ``lifetime`` seconds if its owner has not stopped
it before. Two control paths, never logged, serve its owner:
``/__log`` (the responses so far, as JSON) and ``/__fail?count=N`` (answer
the next N requests with 503, as a storage service does under load). A
``POST`` returns the file like a ``GET`` (a static STAC API's ``/search``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class Served:
    """One response: the request's ``method``, file ``path`` (as requested),
    ``status``, the body ``bytes`` sent and the ``range`` header asked for."""

    method: str
    path: str
    status: int
    bytes: int
    range: str = ""


class RangeServer:
    """Serves ``root`` at ``http://127.0.0.1:<port>/`` from a child process
    (see the module notes). Use as a context manager; :meth:`url` is a
    file's address, :meth:`log` the responses so far, :meth:`served` the
    body bytes sent."""

    def __init__(
        self, root: str | os.PathLike, lifetime: float = 600, max_requests: int = 100_000
    ):
        self.root = Path(root).resolve()
        self.lifetime = lifetime
        self.max_requests = max_requests
        self.process: subprocess.Popen | None = None
        self.port = 0

    def __enter__(self) -> RangeServer:
        self.process = subprocess.Popen(
            [sys.executable, __file__, str(self.root), str(self.lifetime), str(self.max_requests)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.port = int(self.process.stdout.readline())
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stops the server process (idempotent)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def url(self, name: str) -> str:
        """The address of ``name`` (a path under ``root``)."""
        return f"http://127.0.0.1:{self.port}/{name}"

    def _control(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url(path), timeout=10) as response:
            return response.read()

    def log(self) -> list[Served]:
        """Every response so far (control requests left out)."""
        return [Served(**entry) for entry in json.loads(self._control("__log"))]

    def served(self, name: str | None = None) -> int:
        """Body bytes sent so far, for one file or all of them."""
        return sum(s.bytes for s in self.log() if name is None or s.path == f"/{name}")

    def requests(self, name: str | None = None) -> int:
        """Responses so far, for one file or all of them."""
        return sum(1 for s in self.log() if name is None or s.path == f"/{name}")

    def fail(self, count: int) -> None:
        """Answers the next ``count`` requests with 503 Service Unavailable."""
        self._control(f"__fail?count={count}")


def _serve(root: Path, lifetime: float, max_requests: int) -> None:
    """The child process: serves until stopped, ``lifetime`` passed or
    ``max_requests`` answered."""
    log: list[dict] = []
    failures = [0]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet: the log is /__log
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)
            self._stop_if_spent()

        def do_GET(self) -> None:
            self._answer(body=True)
            self._stop_if_spent()

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._answer(body=True, ranged=False)
            self._stop_if_spent()

        def _answer(self, body: bool, ranged: bool = True) -> None:
            parts = urlsplit(self.path)
            path = unquote(parts.path)
            if path == "/__log":
                with lock:
                    self._send(200, json.dumps(log).encode(), "application/json")
                return
            if path == "/__fail":
                with lock:
                    failures[0] = int(parse_qs(parts.query)["count"][0])
                self._send(200, b"", "text/plain")
                return
            with lock:
                failing = failures[0] > 0
                failures[0] -= failing
            if failing:
                self._status(503, path)
                return
            file = (root / path.lstrip("/")).resolve()
            if root not in file.parents or not file.is_file():
                self._status(404, path)
                return
            size = file.stat().st_size
            start, end, status = 0, size - 1, 200
            asked = self.headers.get("Range", "") if ranged else ""
            match = RANGE.match(asked)
            if match:
                first, last = match.groups()
                if first:
                    start, end = int(first), min(int(last) if last else size - 1, size - 1)
                else:
                    start = max(0, size - int(last))
                if start >= size or start > end:
                    self._status(416, path, {"Content-Range": f"bytes */{size}"})
                    return
                status = 206
            length = end - start + 1
            # Logged before anything is sent, so a client that has its answer
            # always finds it in the log.
            self._record(path, status, length if body else 0, asked)
            self.send_response(status)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(length))
            kind = "application/json" if file.suffix == ".json" else "application/octet-stream"
            self.send_header("Content-Type", kind)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if body:
                with open(file, "rb") as f:
                    f.seek(start)
                    self.wfile.write(f.read(length))

        def _send(self, code: int, content: bytes, kind: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def _status(self, code: int, path: str, headers: dict | None = None) -> None:
            self._record(path, code, 0, self.headers.get("Range", ""))
            self.send_response(code)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _record(self, path: str, status: int, sent: int, asked: str) -> None:
            entry = {"method": self.command, "path": path, "status": status, "bytes": sent}
            with lock:
                log.append({**entry, "range": asked})

        def _stop_if_spent(self) -> None:
            """Stops serving once ``max_requests`` answers are sent."""
            with lock:
                spent = len(log) >= max_requests
            if spent:
                threading.Thread(target=server.shutdown, daemon=True).start()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    timer = threading.Timer(lifetime, server.shutdown)
    timer.daemon = True
    timer.start()
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    _serve(Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]))
