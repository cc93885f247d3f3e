"""Result-task cost, patched vs unpatched, fault-free, measured in the same run.

Runs the platform's real task body in this process (``task.apply``) against the real
local stack (PostgreSQL, Redis, NATS JetStream). Each round starts two jobs of N images,
one per variant, and reserves their NATS tasks; then their results are processed in
blocks of B, alternating between the two jobs (the patch installed for the one, removed
for the other), the order flipped every block and every round. So both variants see the
same moment's load and the same point of a job's life (its first and last results, its
completion and cleanup) side by side; a drift in the machine's load (other jobs on a
small VM) lands on both. The ratio is taken per round (patched results/s over unpatched),
and its median is given with a distribution-free interval over the rounds (order
statistics, at least 90 %). A warm-up round runs first and is not counted.

Counted at the clients, per result: Redis round trips (one ``send_packed_command`` is one
request on the wire: a pipeline is one) and PostgreSQL statements (Django's
``execute_wrapper``).

    .venv/bin/python bench/result_task.py [--platform pre-fix|current] [--images 210]
                                          [--block 15] [--rounds 15]

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
ACK_WAIT = 600  # s: both jobs' tasks are reserved at a round's start and acked within it


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


class Statements:
    """PostgreSQL statements sent by this thread's Django connection."""

    def __init__(self):
        from django.db import connection

        self.count = 0
        self._connection = connection

        def counting(execute, sql, params, many, context):
            self.count += 1
            return execute(sql, params, many, context)

        self._wrapper = counting
        connection.execute_wrappers.append(counting)

    def close(self):
        self._connection.execute_wrappers.remove(self._wrapper)


class Variant:
    """One job's results, processed a block at a time, with or without the patch."""

    def __init__(self, n: int, patched: bool):
        self.patched = patched
        self.job = seed.start_async_job(seed.create_async_job(n), ack_wait=ACK_WAIT)
        # In image order: the fake results' detections (1-3, by image id mod 3) come in the
        # same sequence for both jobs, so their blocks carry the same work.
        self.tasks = sorted(seed.reserve_tasks(self.job.pk, n), key=lambda t: int(t.image_id))
        self.elapsed = 0.0
        self.trips = self.statements = 0

    def block(self, start: int, size: int, trips: RoundTrips, statements: Statements) -> None:
        from ami.jobs.tasks import process_nats_pipeline_result
        from blipguard.app_patch import patcher
        from blipguard.app_patch.config import parse

        batch = [(fake_result(int(t.image_id), t.image_url), t.reply_subject) for t in self.tasks[start:start + size]]
        if self.patched:
            patcher.install(parse({}))
        try:
            trips0, statements0 = trips.count, statements.count
            t0 = time.perf_counter()
            for result, reply_subject in batch:
                process_nats_pipeline_result.apply(
                    kwargs={"job_id": self.job.pk, "result_data": result, "reply_subject": reply_subject}
                )
            self.elapsed += time.perf_counter() - t0
            self.trips += trips.count - trips0
            self.statements += statements.count - statements0
        finally:
            if self.patched:
                patcher.uninstall()

    def status(self) -> str:
        from ami.jobs.models import Job

        return Job.objects.get(pk=self.job.pk).status


def one_round(n: int, block: int, first_patched: bool, trips: RoundTrips, statements: Statements) -> dict:
    """Both variants, one job each, in alternating blocks. {patched: (results/s, round
    trips per result, statements per result)}."""
    variants = {False: Variant(n, False), True: Variant(n, True)}
    order = (first_patched, not first_patched)
    for i, start in enumerate(range(0, n, block)):
        for patched in (order if i % 2 == 0 else order[::-1]):
            variants[patched].block(start, block, trips, statements)
    out = {}
    for patched, v in variants.items():
        status = v.status()
        assert status == "SUCCESS", f"{'patched' if patched else 'unpatched'} job ended {status}"
        out[patched] = (n / v.elapsed, v.trips / n, v.statements / n)
    return out


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
    p.add_argument("--images", type=int, default=210, help="results per job (one job per variant a round)")
    p.add_argument("--block", type=int, default=15, help="results in a row of one variant before switching")
    p.add_argument("--rounds", type=int, default=15)
    a = p.parse_args()
    if a.images % 3 or a.block % 3:
        p.error("--images and --block must be multiples of 3 (the fake results' detections cycle by 3)")
    logging.disable(logging.WARNING)  # figures, not log lines (the start-up patch's, every task's)
    with LocalStack() as stack:
        # The patched settings (cache options included) for both variants: the comparison
        # is the code path. The start-up patch is undone; each block chooses.
        setup_django(stack.env(), settings=SETTINGS[PLATFORMS[a.platform]])
        from blipguard.app_patch import patcher

        patcher.uninstall()
        trips, statements = RoundTrips(), Statements()
        one_round(2 * a.block, a.block, False, trips, statements)  # warm-up: connections, imports, scripts
        rows = {False: [], True: []}
        for r in range(a.rounds):
            for patched, row in one_round(a.images, a.block, r % 2 == 1, trips, statements).items():
                rows[patched].append(row)
        statements.close()
        trips.close()
    rates = {v: [row[0] for row in rows[v]] for v in rows}
    ratios = [b / u for u, b in zip(rates[False], rates[True])]
    lo, hi, coverage = median_interval(ratios)
    print(f"platform: {a.platform}, images per job: {a.images}, block: {a.block}, rounds: {a.rounds} "
          f"(variants alternate every block, order flipped every block and round)")
    for patched, name in ((False, "unpatched"), (True, "patched")):
        runs = ", ".join(f"{x:.1f}" for x in rates[patched])
        print(f"{name:9s}: {statistics.median(rates[patched]):7.1f} results/s  (runs: {runs})")
    print("ratios per round: " + ", ".join(f"{x:.3f}" for x in ratios))
    print(f"throughput ratio patched/unpatched: median {statistics.median(ratios):.3f}, "
          f"{coverage:.0%} interval [{lo:.3f}, {hi:.3f}]  (goal >= 0.97)")
    print(f"Redis round trips per result: unpatched {statistics.median(r[1] for r in rows[False]):.3f}, "
          f"patched {statistics.median(r[1] for r in rows[True]):.3f}  (goal: patched <= unpatched)")
    print(f"PostgreSQL statements per result: unpatched {statistics.median(r[2] for r in rows[False]):.2f}, "
          f"patched {statistics.median(r[2] for r in rows[True]):.2f}")


if __name__ == "__main__":
    main()
