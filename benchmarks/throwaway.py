"""Points FiftyOne at a throw-away home (removed at exit); import it before
anything imports fiftyone."""

from fiftyone_home import use_throwaway_home

HOME = use_throwaway_home("diffuprompter-bench-")
