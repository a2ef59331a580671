"""Import Feast without typeguard's run-time instrumentation of its classes.

Feast decorates its public classes with typeguard's ``@typechecked``; typeguard 4 instruments every
decorated function while Feast is imported, by reading its source and compiling it again: most of
what ``import feast`` costs (measured by ``benchmarks/feast_import_benchmark.py``: see the README).
Those checks only guard the types of the arguments given to Feast's own classes, which the platform's
feature definitions satisfy (its tests apply, materialize and read them). The decorator is replaced
only while Feast's modules load; every other library keeps typeguard.

Every process of the platform imports Feast through :func:`import_feast` (``features/store.py``,
the standby serving processes), so the Dagster run worker, the transformers and the tests all save it.
"""

from __future__ import annotations

import sys
import threading
from types import ModuleType

_LOCK = threading.Lock()


def _passthrough(target=None, **_options):
    """``@typechecked`` and ``@typechecked(...)`` that leave the decorated object as it is."""
    return target if target is not None else (lambda decorated: decorated)


def import_feast() -> ModuleType:
    """``feast``, imported (once per process) with typeguard's instrumentation switched off."""
    if "feast" in sys.modules:
        return sys.modules["feast"]
    with _LOCK:
        if "feast" in sys.modules:
            return sys.modules["feast"]
        import typeguard

        original = typeguard.typechecked
        typeguard.typechecked = _passthrough
        try:
            import feast
        finally:
            typeguard.typechecked = original
        return feast
