"""A throw-away FiftyOne home: a temp database and dataset dir, removed at exit.

Call it before anything imports fiftyone. The tests (``conftest.py``) and
the benchmarks (``benchmarks/throwaway.py``) both use it, so no run touches the
user's own database or leaves hundreds of MB of MongoDB files in the temp
folder.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile


def use_throwaway_home(prefix: str, **settings: str) -> str:
    """Points FiftyOne at a new temp folder and returns it.

    ``settings`` are extra environment variables (``FIFTYONE_*``) to set. At
    exit, the database service is stopped and the folder deleted; this handler
    is registered before fiftyone is imported, so it runs after fiftyone's own.
    """
    home = tempfile.mkdtemp(prefix=prefix)
    os.environ.update(
        FIFTYONE_DATABASE_DIR=f"{home}/db",
        FIFTYONE_DEFAULT_DATASET_DIR=f"{home}/datasets",
        FIFTYONE_DATABASE_VALIDATION="false",
        FIFTYONE_DO_NOT_TRACK="true",
        **settings,
    )
    atexit.register(_remove_home, home)
    return home


def _remove_home(home: str) -> None:
    database = sys.modules.get("fiftyone.core.odm.database")
    service = getattr(database, "_db_service", None)
    if service is not None:
        service.stop()  # mongod exits once its last client has gone
    shutil.rmtree(home, ignore_errors=True)
