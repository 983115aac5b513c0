"""Points FiftyOne at a throw-away database and dataset dir; import it before
anything imports fiftyone."""

import os
import tempfile

HOME = tempfile.mkdtemp(prefix="diffuprompter-bench-")
os.environ.update(
    FIFTYONE_DATABASE_DIR=f"{HOME}/db",
    FIFTYONE_DEFAULT_DATASET_DIR=f"{HOME}/datasets",
    FIFTYONE_DATABASE_VALIDATION="false",
    FIFTYONE_DO_NOT_TRACK="true",
)
