"""Stand-in for ``cachalot.api.cachalot_disabled`` (see the package docstring)."""

import threading
from contextlib import ContextDecorator

_local = threading.local()


def cachalot_is_disabled() -> bool:
    return getattr(_local, "disabled", 0) > 0


class cachalot_disabled(ContextDecorator):  # noqa: N801 - the real API's name
    def __init__(self, all_queries: bool = False):
        self.all_queries = all_queries

    def __enter__(self):
        _local.disabled = getattr(_local, "disabled", 0) + 1
        return self

    def __exit__(self, *exc):
        _local.disabled -= 1
        return False
