"""``log_time()``: a timer the result task uses for its ``TIME:`` lines.

The fact sheet names ``log_time()`` but not its module or exact shape: this minimal
version returns ``(start, elapsed_fn)`` where ``elapsed_fn()`` gives seconds since start.
"""

import time


def log_time(start: float | None = None):
    start = time.monotonic() if start is None else start

    def elapsed() -> float:
        return time.monotonic() - start

    return start, elapsed
