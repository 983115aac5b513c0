"""A local S3-compatible server for tests and benchmarks: moto's S3 in a
process of its own on 127.0.0.1, logging the bytes of every response.

It exits by itself after ``lifetime`` seconds or ``max_requests`` requests,
like :mod:`range_server`; ``/__log`` (never logged) returns the responses
so far as JSON. GDAL reaches it with ``AWS_S3_ENDPOINT=127.0.0.1:<port>``,
``AWS_HTTPS=NO`` and ``AWS_VIRTUAL_HOSTING=FALSE``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

from range_server import Served

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
}
"""moto accepts any credentials; these are signed with as AWS would."""


class S3Server:
    """moto's S3 at ``http://127.0.0.1:<port>`` in a child process.

    :meth:`upload` puts local files into a bucket; :meth:`gdal_env` is the
    environment GDAL needs to read ``s3://`` URLs from it; :meth:`log` and
    :meth:`served` tell what was sent.
    """

    def __init__(self, lifetime: float = 600, max_requests: int = 100_000) -> None:
        self.lifetime = lifetime
        self.max_requests = max_requests
        self.process: subprocess.Popen | None = None
        self.port = 0

    def __enter__(self) -> S3Server:
        self.process = subprocess.Popen(
            [sys.executable, __file__, str(self.lifetime), str(self.max_requests)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.port = int(self.process.stdout.readline())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def gdal_env(self) -> dict[str, str]:
        """Environment variables for GDAL's ``/vsis3/`` to read from here."""
        return {
            **CREDENTIALS,
            "AWS_S3_ENDPOINT": f"127.0.0.1:{self.port}",
            "AWS_HTTPS": "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE",
        }

    def upload(self, bucket: str, files: list[Path]) -> list[str]:
        """Creates ``bucket`` and puts ``files`` in it; returns their ``s3://`` URLs."""
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_REGION"],
        )
        client.create_bucket(Bucket=bucket)
        for file in files:
            client.upload_file(str(file), bucket, file.name)
        return [f"s3://{bucket}/{file.name}" for file in files]

    def log(self) -> list[Served]:
        """Every response so far."""
        with urllib.request.urlopen(f"{self.endpoint}/__log", timeout=10) as response:
            return [Served(**entry) for entry in json.loads(response.read())]

    def served(self, key: str) -> int:
        """Body bytes sent by GETs of ``key`` (``bucket/name``)."""
        return sum(s.bytes for s in self.log() if s.method == "GET" and s.path == f"/{key}")


def _serve(lifetime: float, max_requests: int) -> None:
    """The child process: moto's S3 behind a logging middleware."""
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log(self, *args: object) -> None:  # the log is /__log
            pass

    moto = DomainDispatcherApplication(create_backend_app)
    log: list[dict] = []
    lock = threading.Lock()

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/__log":
            with lock:
                body = json.dumps(log).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        status = []

        def record_status(code, headers, *args):
            status.append(int(code.split()[0]))
            return start_response(code, headers, *args)

        body = b"".join(moto(environ, record_status))
        entry = {
            "method": environ["REQUEST_METHOD"],
            "path": path,
            "status": status[0],
            "bytes": len(body),
            "range": environ.get("HTTP_RANGE", ""),
        }
        with lock:
            log.append(entry)
            spent = len(log) >= max_requests
        if spent:
            threading.Thread(target=server.shutdown, daemon=True).start()
        return [body]

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=Quiet)
    timer = threading.Timer(lifetime, server.shutdown)
    timer.daemon = True
    timer.start()
    print(server.server_port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    _serve(float(sys.argv[1]), int(sys.argv[2]))
