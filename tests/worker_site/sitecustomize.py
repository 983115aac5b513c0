"""Test hook for worker processes, loaded by Python at start-up when this
folder is on PYTHONPATH (tests/test_workers.py and benchmarks/bench_workers.py
put it there for their ``fiftyone delegated launch`` workers).

With ``DIFFUPROMPTER_TEST_STUB=<seconds>`` set, every run loads a
:class:`helpers.SlowStubModel` taking that many seconds per sample instead
of its recorded models (``DIFFUPROMPTER_TEST_HANG_AFTER=<n>``: it hangs on
its n+1-th sample, so that a test can kill the worker mid-sample).
Nothing in the plugin knows about it.
"""

import importlib.abc
import importlib.util
import os
import sys

HOOKED = "diffuprompter_plugin.brain"


class _PatchBrain(importlib.abc.MetaPathFinder):
    """Replaces ``PseudoLabelsConfig.load_model`` once the module is loaded."""

    def find_spec(self, name, path, target=None):
        if name != HOOKED:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def patched(module):
            exec_module(module)
            sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            from helpers import SlowStubModel

            hang = os.environ.get("DIFFUPROMPTER_TEST_HANG_AFTER")
            module.PseudoLabelsConfig.load_model = lambda self, device=None, model=None: (
                SlowStubModel(
                    float(os.environ["DIFFUPROMPTER_TEST_STUB"]),
                    hang_after=int(hang) if hang else None,
                )
            )

        spec.loader.exec_module = patched
        return spec


if os.environ.get("DIFFUPROMPTER_TEST_STUB"):
    sys.meta_path.insert(0, _PatchBrain())
