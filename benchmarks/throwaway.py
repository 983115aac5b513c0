"""Points FiftyOne at a throw-away home (removed at exit); import it before
anything imports fiftyone. The home itself is the tests' (``tests/fiftyone_home.py``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fiftyone_home import use_throwaway_home  # noqa: E402

HOME = use_throwaway_home("diffuprompter-bench-")
