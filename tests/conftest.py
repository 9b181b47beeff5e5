"""Test order: the modules that start threads in this process (JAX's runtime, a Ray driver) run
last, so that the tests which fork a child (``tests/fuzzlib.py``: a loader under a time bound)
never fork a multithreaded process, where a lock held by another thread can hang the child."""

from __future__ import annotations

#: Test modules whose imports or fixtures start threads that outlive their tests.
THREADED_MODULES = ("test_gpu_engine", "test_cluster", "test_cluster_station")


def pytest_collection_modifyitems(session, config, items):
    """Stable reorder: everything else first, then :data:`THREADED_MODULES` in their own order."""
    items[:] = sorted(items, key=lambda item: item.module.__name__.rsplit(".", 1)[-1] in THREADED_MODULES)
