"""Resolve the policy's ``workload`` line into a :class:`~adapters.workload.protocol.Workload`.

Where it sits in the loop: the daemon (and each trial worker) turns configuration into the
object it trains, scores and serves. Kept apart from the protocol so implementations can
import the types without importing the loader, which knows the built-in ones.
"""

from __future__ import annotations

import importlib
from typing import Any

from adapters.workload.protocol import Workload

__all__ = ["load_workload"]

#: Methods an object must have to be accepted as a workload by :func:`load_workload`.
_REQUIRED_METHODS: tuple[str, ...] = ("train", "evaluate", "load")


def load_workload(spec: str) -> Workload:
    """Resolve a workload from configuration.

    ``"bytelm"`` is the built-in byte-level transformer; anything else must be
    ``"package.module:object"``.  A class is instantiated with no arguments.  Errors are
    ``ValueError`` so a bad config line is reported as such, not as an import traceback.
    """
    spec = spec.strip()
    if spec == "bytelm":
        from adapters.workload.bytelm import ByteLMWorkload  # torch: only when asked for

        return ByteLMWorkload()

    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(
            f"invalid workload spec {spec!r}: expected 'bytelm' or 'package.module:object'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"invalid workload spec {spec!r}: cannot import module {module_name!r} ({exc})"
        ) from exc

    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ValueError(
                f"invalid workload spec {spec!r}: module {module_name!r} has no {attr_path!r}"
            ) from exc

    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as exc:
            raise ValueError(
                f"invalid workload spec {spec!r}: cannot instantiate {attr_path!r} "
                f"with no arguments ({exc})"
            ) from exc

    missing = [m for m in _REQUIRED_METHODS if not callable(getattr(obj, m, None))]
    if missing:
        raise ValueError(
            f"invalid workload spec {spec!r}: {attr_path!r} is not a workload "
            f"(missing method(s): {', '.join(missing)})"
        )
    return obj
