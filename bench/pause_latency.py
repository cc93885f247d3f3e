"""Time from the pause broadcast to the last worker's confirmation, for 1, 2, 4, 8 workers.

Real RabbitMQ, real prefork workers running the patched reference app. The baseline,
measured in the same run against the same workers, is Celery's own `ping` broadcast.

    .venv/bin/python bench/pause_latency.py [--rounds 60] [--workers 1,2,4,8]

Goal (issue: pause): p99 under 100 ms at 8 workers on a 2-core machine.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from blipguard.harness.django_env import app_env, setup_django
from blipguard.localstack import CeleryWorkers, LocalStack


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def measure(fn, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--workers", default="1,2,4,8")
    a = p.parse_args()
    counts = [int(x) for x in a.workers.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="blipguard-bench-"))
    with LocalStack(workdir / "stack") as stack:
        setup_django(stack.env())
        from refsite.celery import app

        from blipguard.app_patch.pause import client as fleet

        print(f"{'workers':>7} {'pause p50':>10} {'pause p99':>10} {'ping p50':>9} {'ping p99':>9} {'p99 ratio':>9}")
        for n in counts:
            workers = CeleryWorkers("refsite", "ml_results", app_env(stack.env(), "refsite.settings_patched"), workdir / f"w{n}")
            try:
                workers.start(count=n, concurrency=1)
                workers.wait_ready(120)

                def ping_once():
                    r = app.control.broadcast("ping", reply=True, limit=n, timeout=2)
                    assert len(r) == n

                # Pause latency alone: time the pause, not the resume that follows it.
                pauses = []
                for _ in range(a.rounds):
                    t0 = time.perf_counter()
                    r = fleet.pause(app, lease=30, reason="bench", expect=n, timeout=2)
                    pauses.append((time.perf_counter() - t0) * 1000)
                    assert len(r.confirmed) == n, r.replies
                    fleet.resume(app, expect=n, timeout=2)
                pings = measure(ping_once, a.rounds)
                print(
                    f"{n:>7} {statistics.median(pauses):>8.1f}ms {pct(pauses, 0.99):>8.1f}ms "
                    f"{statistics.median(pings):>7.1f}ms {pct(pings, 0.99):>7.1f}ms {pct(pauses, 0.99) / pct(pings, 0.99):>9.2f}"
                )
            finally:
                workers.stop()


if __name__ == "__main__":
    main()
