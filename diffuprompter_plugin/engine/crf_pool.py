"""The process pool that runs DenseCRF beside the models (``crf_workers``).

Its processes are spawned, so they inherit no CUDA state; they run
single-threaded, so that N processes use N cores without BLAS or OpenMP
oversubscription; they run at a lower CPU priority than the caller, so
that where cores are short the process feeding the models is not slowed
by its own pool (the pool takes what it leaves); and they start without
importing the caller's ``__main__``, so a user script with no
``if __name__ == "__main__":`` guard is not run again in every pool
process (it would otherwise fail every image with ``BrokenProcessPool``).
This module imports nothing heavy: a pool process runs
:func:`pool_process_setup` before its first task imports numpy.
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from multiprocessing.context import SpawnContext, SpawnProcess

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
"""Environment variables that size the OpenMP and BLAS thread pools."""


NICENESS = 10
"""How much lower the pool processes' CPU priority is than the caller's."""


def pool_process_setup() -> None:
    """Pool process initializer: one OpenMP and BLAS thread, set before any
    library that reads these variables is imported, and :data:`NICENESS`."""
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"
    if hasattr(os, "nice"):  # POSIX; Windows has no niceness
        os.nice(NICENESS)


@contextlib.contextmanager
def _main_hidden() -> Iterator[None]:
    """Makes ``__main__`` a bare module while a pool process is launched, so
    that multiprocessing does not tell it to import the caller's script."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class _PoolProcess(SpawnProcess):
    """A spawned process that does not import the caller's ``__main__``."""

    @staticmethod
    def _Popen(process_obj):  # noqa: N802 (multiprocessing's name)
        with _main_hidden():
            return SpawnProcess._Popen(process_obj)


class _PoolContext(SpawnContext):
    Process = _PoolProcess


class InlineExecutor(Executor):
    """The pool of no worker: each task runs in the caller as it is
    submitted, and its future is already done."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as e:  # noqa: BLE001 (delivered by the future, as a pool does)
            future.set_exception(e)
        return future


def crf_pool(processes: int) -> Executor:
    """A pool of ``processes`` single-threaded processes that never import
    ``__main__`` (processes start at the first task); tasks must be
    module-level functions of importable modules. With 0 processes, an
    :class:`InlineExecutor`."""
    if processes == 0:
        return InlineExecutor()
    context = _PoolContext()
    return ProcessPoolExecutor(processes, mp_context=context, initializer=pool_process_setup)
