"""Result-task cost, patched vs pre-fix, fault-free, measured in the same run.

Runs the real task body in this process (``task.apply``) against the real local stack
(PostgreSQL, Redis, NATS JetStream): for each variant, a job of N images whose NATS tasks
are reserved first, then one result per image. Variants alternate over several rounds;
figures are medians. Redis round trips are counted at the client (one
``send_packed_command`` is one request on the wire: a pipeline is one).

    .venv/bin/python bench/result_task.py [--images 300] [--rounds 5]

Goals (issue: app_patch): throughput ratio patched/pre-fix >= 0.97; Redis round trips
per result no more than pre-fix.
"""

import argparse
import statistics
import time

from asgiref.sync import async_to_sync

from blipguard.harness.django_env import setup_django
from blipguard.harness.simulator import fake_result
from blipguard.localstack import LocalStack


def reserve_all(job_id: int, n: int) -> list[dict]:
    from ami.ml.orchestration.nats_queue import TaskQueueManager

    async def pull() -> list[dict]:
        out: list[dict] = []
        async with TaskQueueManager() as m:
            while len(out) < n:
                out += await m.reserve_tasks(job_id, min(100, n - len(out)), timeout=2)
        return out

    return async_to_sync(pull)()


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
    from ami.jobs.services import start_async_job
    from ami.jobs.tasks import process_nats_pipeline_result
    from blipguard.app_patch import patcher
    from blipguard.app_patch.config import parse

    cfg = parse({"ACK_WAIT": 300})
    if patched:
        patcher.install(cfg)
    try:
        job = start_async_job(n)
        tasks = reserve_all(job.pk, n)
        before = trips.count
        t0 = time.perf_counter()
        for t in tasks:
            process_nats_pipeline_result.apply(
                kwargs={"job_id": job.pk, "result_data": fake_result(t["image_id"]), "reply_subject": t["reply_subject"]}
            )
        elapsed = time.perf_counter() - t0
        per_result = (trips.count - before) / n
        status = Job.objects.get(pk=job.pk).status
    finally:
        if patched:
            patcher.uninstall(cfg)
    return n / elapsed, per_result, status


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    with LocalStack() as stack:
        # The patched cache settings, for both variants: the comparison is the code path.
        setup_django(stack.env(), settings="refsite.settings_patched")
        from blipguard.app_patch import patcher
        from blipguard.app_patch.config import parse

        patcher.uninstall(parse({"ACK_WAIT": 300}))  # undo the start-up patch; rounds choose
        trips = RoundTrips()
        one_round(20, False, trips)  # warm-up: connections, imports
        one_round(20, True, trips)
        rates = {False: [], True: []}
        rts = {False: [], True: []}
        for r in range(a.rounds):
            for patched in ((False, True) if r % 2 == 0 else (True, False)):
                rate, rt, status = one_round(a.images, patched, trips)
                assert status == "SUCCESS", f"{'patched' if patched else 'pre-fix'} job ended {status}"
                rates[patched].append(rate)
                rts[patched].append(rt)
        trips.close()
    pre, post = statistics.median(rates[False]), statistics.median(rates[True])
    rt_pre, rt_post = statistics.median(rts[False]), statistics.median(rts[True])
    print(f"images per job: {a.images}, rounds: {a.rounds} (alternating order)")
    print(f"pre-fix : {pre:8.1f} results/s  (runs: {', '.join(f'{x:.0f}' for x in rates[False])})")
    print(f"patched : {post:8.1f} results/s  (runs: {', '.join(f'{x:.0f}' for x in rates[True])})")
    print(f"throughput ratio patched/pre-fix: {post / pre:.3f}  (goal >= 0.97)")
    print(f"Redis round trips per result: pre-fix {rt_pre:.3f}, patched {rt_post:.3f}  (goal: patched <= pre-fix;"
          f" both are 2 per result plus the job cleanup, where the patch adds one DEL per job)")


if __name__ == "__main__":
    main()
