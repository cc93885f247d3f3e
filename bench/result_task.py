"""Result-task cost, patched vs unpatched, fault-free, measured in the same run.

Runs the platform's real task body in this process (``task.apply``) against the real
local stack (PostgreSQL, Redis, NATS JetStream): for each variant, a job of N images whose
NATS tasks are reserved first, then one result per image. The variants alternate within
each round (order flipped every round); the ratio is taken per round, and its median is
given with a 90 % interval over the rounds. Redis round trips are counted at the client
(one ``send_packed_command`` is one request on the wire: a pipeline is one).

    .venv/bin/python bench/result_task.py [--platform pre-fix|current] [--images 200] [--rounds 7]

Goals: throughput ratio patched/unpatched >= 0.97; Redis round trips per result no more
than unpatched.
"""

import argparse
import logging
import statistics
import time

from blipguard.harness import seed
from blipguard.harness.django_env import setup_django
from blipguard.harness.simulator import fake_result
from blipguard.localstack import LocalStack
from blipguard.refapp import SETTINGS

PLATFORMS = {"pre-fix": "pre_patched", "current": "head_patched"}


class RoundTrips:
    def __init__(self):
        from redis.connection import Connection

        self.count = 0
        self._cls = Connection
        self._orig = Connection.send_packed_command
        counter = self

        def counting(conn, *a, **kw):
            counter.count += 1
            return counter._orig(conn, *a, **kw)

        Connection.send_packed_command = counting

    def close(self):
        self._cls.send_packed_command = self._orig


def one_round(n: int, patched: bool, trips: RoundTrips) -> tuple[float, float, str]:
    from ami.jobs.models import Job
    from ami.jobs.tasks import process_nats_pipeline_result
    from blipguard.app_patch import patcher
    from blipguard.app_patch.config import parse

    if patched:
        patcher.install(parse({}))
    try:
        job = seed.start_async_job(seed.create_async_job(n))
        tasks = seed.reserve_tasks(job.pk, n)
        before = trips.count
        t0 = time.perf_counter()
        for t in tasks:
            result = fake_result(int(t.image_id), t.image_url)
            process_nats_pipeline_result.apply(
                kwargs={"job_id": job.pk, "result_data": result, "reply_subject": t.reply_subject}
            )
        elapsed = time.perf_counter() - t0
        per_result = (trips.count - before) / n
        status = Job.objects.get(pk=job.pk).status
    finally:
        if patched:
            patcher.uninstall()
    return n / elapsed, per_result, status


def median_interval(values: list[float]) -> tuple[float, float, float]:
    """The median's distribution-free confidence interval from order statistics: with n
    rounds, [x_(k), x_(n+1-k)] covers the true median with probability 1 - 2*P(B <= k-1),
    B ~ Binomial(n, 1/2); k is the largest with coverage >= 0.9. Returns (lo, hi, coverage)."""
    from math import comb

    xs, n = sorted(values), len(values)
    best = (xs[0], xs[-1], 1 - 2 * 0.5**n)
    for k in range(1, n // 2 + 1):
        coverage = 1 - 2 * sum(comb(n, i) for i in range(k)) / 2**n
        if coverage < 0.9:
            break
        best = (xs[k - 1], xs[n - k], coverage)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--platform", choices=sorted(PLATFORMS), default="pre-fix")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--rounds", type=int, default=7)
    a = p.parse_args()
    with LocalStack() as stack:
        # The patched settings (cache options included) for both variants: the comparison
        # is the code path. The start-up patch is undone; each round chooses.
        setup_django(stack.env(), settings=SETTINGS[PLATFORMS[a.platform]])
        logging.disable(logging.WARNING)  # figures, not every task's log line
        from blipguard.app_patch import patcher

        patcher.uninstall()
        trips = RoundTrips()
        one_round(20, False, trips)  # warm-up: connections, imports
        one_round(20, True, trips)
        rates = {False: [], True: []}
        rts = {False: [], True: []}
        for r in range(a.rounds):
            for patched in ((False, True) if r % 2 == 0 else (True, False)):
                rate, rt, status = one_round(a.images, patched, trips)
                assert status == "SUCCESS", f"{'patched' if patched else 'unpatched'} job ended {status}"
                rates[patched].append(rate)
                rts[patched].append(rt)
        trips.close()
    ratios = [b / u for u, b in zip(rates[False], rates[True])]
    lo, hi, coverage = median_interval(ratios)
    print(f"platform: {a.platform}, images per job: {a.images}, rounds: {a.rounds} (order flipped every round)")
    for patched, name in ((False, "unpatched"), (True, "patched")):
        runs = ", ".join(f"{x:.1f}" for x in rates[patched])
        print(f"{name:9s}: {statistics.median(rates[patched]):7.1f} results/s  (runs: {runs})")
    print(f"throughput ratio patched/unpatched: median {statistics.median(ratios):.3f}, "
          f"{coverage:.0%} interval [{lo:.3f}, {hi:.3f}]  (goal >= 0.97)")
    print(f"Redis round trips per result: unpatched {statistics.median(rts[False]):.3f}, "
          f"patched {statistics.median(rts[True]):.3f}  (goal: patched <= unpatched)")


if __name__ == "__main__":
    main()
