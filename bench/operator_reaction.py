"""Operator reaction time: a Redis pod's readiness flip in the API to every worker paused.

Real kube-apiserver (etcd + kube-apiserver), the real operator process under its
least-privilege ServiceAccount, real RabbitMQ and N prefork Celery workers (concurrency 1)
running the patched reference app. The Redis pod is the stack's real redis-server mirrored
by ``PodMirror``; the mirror is then stopped and each flip PATCHes the pod's status
(Ready/ContainersReady False, the container not ready) through the admin client, as a
kubelet would. Redis itself stays up, so no worker's own breaker takes part.

One flip: PATCH Ready=False, then wait for the operator's ``Paused`` line; PATCH
Ready=True, then wait for the resume and the operator's consuming check to finish, so the
next flip finds the guard idle. The guard's settle time is 0 by default.

What is timed: from the moment the status PATCH's response is back in this process to the
moment the operator holds the confirmation of the last of the N workers. That moment is
read from the operator's own log, after the fact: its ``Paused`` line is written right
after the pause broadcast returned with every reply (the same moment it sets
``blipguard_operator_workers_confirmed{command="pause"}``), and its timestamp has
millisecond resolution. Nothing is polled over the broker or the operator's HTTP port while
a flip is in flight (only this process reads the log file), so the measurement adds no load
to the workers or the operator. Per flip it is cross-checked afterwards: one ``status``
broadcast shows every worker paused under this blip and the metric reads N. The workers'
own ``paused ... blip <id>`` log lines (millisecond timestamps) give when the last worker
applied the pause, and the blip id holds the operator's event time: together they split
the reaction into "API -> operator handler", "handler -> last confirmation" and "last
worker applied" (the rest is the replies' way back to the operator).

Why not poll: a tight ``pause.client.status`` loop sends control messages to the very
worker main processes that must handle the pause, one message at a time, so a status in
flight delays the pause being timed, and the loop's resolution is one status round trip
(a fresh broker connection each, tens of ms here). The ``workers_confirmed`` gauge carries
no timestamp, and scraping it in a loop takes CPU (and the GIL) from the operator being
timed. The log line is the same moment, stamped by the operator itself.

Baseline, in the same run and against the same workers: Celery's ``ping`` broadcast round
trip (reply from all N), one after each flip, as many as there are flips.

    .venv/bin/python bench/operator_reaction.py                 # full: 8 workers, 40 flips
    .venv/bin/python bench/operator_reaction.py --quick         # validation: 2 workers, 5 flips

Goal: reaction p99 < 150 ms (8 workers, 2-core machine).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import logging
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

GOAL_P99_MS = 150.0
QUEUE = "ml_results"  # the HEAD platform's result queue
GUARD = "fleet"
LOG_TS = re.compile(r"(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d)[,.](\d{3})")


def pct(values: list[float], q: float) -> float:
    """The q-quantile by nearest rank (as bench/pause_latency.py); with 40 values p99 is the max."""
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def log_time(line: str) -> float:
    """Epoch seconds of a log line's ``asctime`` (local time, milliseconds)."""
    m = LOG_TS.search(line)
    if m is None:
        raise ValueError(f"no timestamp in operator log line: {line!r}")
    t = time.mktime(time.strptime(m.group(1).replace("T", " "), "%Y-%m-%d %H:%M:%S"))
    return t + int(m.group(2)) / 1000


class LogFollower:
    """Reads the lines an operator log gains from a mark on; never touches the process."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def wait_line(self, pattern: re.Pattern, fail: re.Pattern, timeout: float, interval: float = 0.005) -> str:
        deadline = time.monotonic() + timeout
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            while True:
                raw = f.readline()
                if raw.endswith(b"\n"):  # a partial last line waits for its end
                    self.offset = f.tell()
                    line = raw.decode(errors="replace")
                    if pattern.search(line):
                        return line
                    if fail.search(line):
                        raise RuntimeError(f"operator: {line}")
                    continue
                f.seek(self.offset)
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"no line matching {pattern.pattern!r} in {self.path} after {timeout}s")
                time.sleep(interval)


def _ts(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def readiness_status(base: dict, ready: bool) -> dict:
    """The mirrored pod's status with readiness set as a kubelet would write it."""
    status = dict(base)
    now = _ts(time.time())
    unready = [c["name"] for c in base.get("containerStatuses", [])]
    conditions = []
    for c in base["conditions"]:
        c = dict(c)
        if c["type"] in ("Ready", "ContainersReady"):
            c["status"] = "True" if ready else "False"
            c["lastTransitionTime"] = now
            c.pop("reason", None)
            c.pop("message", None)
            if not ready:
                c["reason"] = "ContainersNotReady"
                c["message"] = f"containers with unready status: [{' '.join(unready)}]"
        conditions.append(c)
    status["conditions"] = conditions
    status["containerStatuses"] = [{**c, "ready": ready} for c in base.get("containerStatuses", [])]
    return status


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="Full size: the defaults. Validation: --quick (2 workers, 5 flips).")
    p.add_argument("--workers", type=int, default=8, help="prefork workers, concurrency 1 each (default 8)")
    p.add_argument("--flips", type=int, default=40, help="timed readiness flips, and as many pings (default 40)")
    p.add_argument("--settle", type=float, default=0.0, help="the guard's settleSeconds (default 0)")
    p.add_argument("--quick", action="store_true", help="a short validation run: 2 workers, 5 flips")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs) after a good run")
    a = p.parse_args()
    if a.quick:
        a.workers, a.flips = 2, 5
    if a.workers < 1 or a.flips < 1:
        p.error("--workers and --flips must be >= 1")

    from blipguard.harness.django_env import app_env, setup_django
    from blipguard.localstack import CeleryWorkers, LocalStack
    from blipguard.localstack.guard_operator import OperatorProcess, guard_path, operator_kubeconfig
    from blipguard.localstack.kube import KubeServer
    from blipguard.localstack.podmirror import PodMirror
    from blipguard.localstack.procs import wait_until
    from blipguard.operator import crd
    from blipguard.operator.kube_setup import install_crd
    from blipguard.refapp import SETTINGS

    n = a.workers
    workdir = Path(tempfile.mkdtemp(prefix="blipguard-bench-reaction-"))
    ok = False
    with contextlib.ExitStack() as es:
        try:
            t0 = time.monotonic()
            kube = es.enter_context(KubeServer(workdir / "kube"))
            stack = es.enter_context(LocalStack(workdir / "stack"))
            setup_django(stack.env(), SETTINGS["head"])
            logging.disable(logging.WARNING)
            from config import celery_app as app

            from blipguard.app_patch.pause import client as fleet

            workers = CeleryWorkers("config", QUEUE, app_env(stack.env(), SETTINGS["head_patched"],
                                                             BLIPGUARD_SOCKET_TIMEOUT="1",
                                                             BLIPGUARD_CONNECT_TIMEOUT="1"), workdir / "workers")
            es.callback(workers.stop)
            workers.start(count=n, concurrency=1)

            install_crd(kube.client)
            ns = kube.create_namespace("bench-reaction")
            mirror = PodMirror(kube.client, ns, redis=stack.redis, redis_release="cache", interval=0.05)
            mirror.start()
            try:
                wait_until(lambda: mirror.pods[mirror.redis_pod].containers[0].ready, 20, "the Redis pod ready")
                mirror.sync()
            finally:
                mirror.stop()  # from here on, this script alone writes the pod's status
            pod = mirror.redis_pod
            base_status = mirror.pods[pod].last_status
            assert base_status is not None and any(
                c["type"] == "Ready" and c["status"] == "True" for c in base_status["conditions"]), base_status
            status_path = f"/api/v1/namespaces/{ns}/pods/{pod}/status"

            kube.client.create(f"/api/v1/namespaces/{ns}/secrets", {
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "celery-broker"},
                "data": {"url": base64.b64encode(stack.rabbitmq.url.encode()).decode()}})
            op = OperatorProcess(operator_kubeconfig(kube, ns, workdir / "operator.kubeconfig"), [ns],
                                 workdir / "operator")
            es.callback(op.stop)
            op.start()
            workers.wait_ready(180)

            kube.client.create(guard_path(ns), {
                "apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": GUARD},
                "spec": {"dependencies": [{"kind": "redis"}],
                         "pause": {"brokerSecretRef": {"name": "celery-broker"}, "resultQueues": [QUEUE],
                                   "expectedWorkers": n},
                         "timing": {"settleSeconds": a.settle, "leaseSeconds": 30}}})

            def phase() -> str | None:
                return (kube.client.get(guard_path(ns, GUARD)).get("status") or {}).get("phase")

            wait_until(lambda: phase() == "watching", 60, "the guard to watch")
            print(f"setup: {time.monotonic() - t0:.1f}s ({n} workers, operator pid {op.proc.pid})", file=sys.stderr)

            labels = {"namespace": ns, "guard": GUARD}
            follower = LogFollower(op.log_path)
            paused_re = re.compile(rf"^{LOG_TS.pattern} .*{re.escape(ns)}/{GUARD} Paused: \[(?P<blip>redis-(?P<ms>\d+))\] "
                                   rf"(?P<n>\d+) workers paused")
            fail_re = re.compile(rf"{re.escape(ns)}/{GUARD} (PauseIncomplete|PauseFailed|PauseChannelError):")

            def fleet_paused() -> list[bool]:
                return [bool(r.get("paused")) for r in fleet.status(app, expect=n, timeout=2).replies.values()]

            def flip() -> dict[str, float]:
                """One timed flip and the full recovery after it; figures in ms."""
                status_checks = op.metric("blipguard_operator_broadcasts_total", command="status", **labels)
                pauses_ok = op.metric("blipguard_operator_broadcasts_total", command="pause", outcome="ok",
                                      **labels)
                follower.mark()
                time.sleep(random.uniform(0.05, 0.3))  # off any rhythm of the operator's 0.25 s tick
                sent = time.time()
                kube.client.patch(status_path, {"status": readiness_status(base_status, False)})
                back = time.time()
                line = follower.wait_line(paused_re, fail_re, timeout=15)
                m = paused_re.search(line)
                confirmed_at = log_time(line)
                if int(m.group("n")) != n:
                    raise RuntimeError(f"{m.group('n')} of {n} workers confirmed: {line}")
                # Cross-checks, after the timed interval: the workers and the metric agree.
                blip = m.group("blip")
                replies = fleet.status(app, expect=n, timeout=2).replies
                for host, r in replies.items():
                    if not r.get("paused") or not any(blip in x.get("reason", "") for x in r.get("leases", [])):
                        raise RuntimeError(f"{host} not paused under {blip}: {r}")
                if len(replies) != n:
                    raise RuntimeError(f"{len(replies)} of {n} workers answered the status check")
                confirmed_metric = op.metric("blipguard_operator_workers_confirmed", command="pause", **labels)
                if confirmed_metric != n or op.metric("blipguard_operator_broadcasts_total", command="pause",
                                                      outcome="ok", **labels) != pauses_ok + 1:
                    raise RuntimeError(f"operator metrics disagree: workers_confirmed {confirmed_metric}")
                # Recovery: ready again, resumed, and the operator's consuming check done.
                kube.client.patch(status_path, {"status": readiness_status(base_status, True)})
                wait_until(lambda: op.metric("blipguard_operator_broadcasts_total", command="status", **labels)
                           > status_checks, 30, "the resume and the consuming check", interval=0.05)
                wait_until(lambda: phase() == "watching", 30, "the guard back to watching", interval=0.05)
                if any(fleet_paused()):
                    raise RuntimeError("a worker is still paused after the resume")
                applied = [worker_paused_at(h, blip) for h in workers.hostnames]
                return {"reaction": (confirmed_at - back) * 1000, "patch_rtt": (back - sent) * 1000,
                        "to_handler": (int(m.group("ms")) / 1000 - back) * 1000,
                        "handler_to_confirmed": (confirmed_at - int(m.group("ms")) / 1000) * 1000,
                        "last_applied": (max(applied) - back) * 1000}

            def worker_paused_at(host: str, blip: str) -> float:
                """When the worker applied the pause: its own "paused ... blip <id>" log line."""
                needle = f"blip {blip}:"

                def find() -> float | None:
                    for line in workers.logs(host).splitlines():
                        if needle in line and " paused [" in line and LOG_TS.match(line):
                            return log_time(line)
                    return None
                return wait_until(find, 5, f"{host}'s pause line for {blip}", interval=0.05)

            def ping() -> float:
                t = time.perf_counter()
                r = app.control.broadcast("ping", reply=True, limit=n, timeout=2)
                elapsed = (time.perf_counter() - t) * 1000
                if len(r) != n:
                    raise RuntimeError(f"{len(r)} of {n} workers answered ping")
                return elapsed

            flip()  # warm-up, not counted: first broker connection, first status write
            ping()
            rows: list[dict[str, float]] = []
            pings: list[float] = []
            for i in range(a.flips):
                rows.append(flip())
                pings.append(ping())
                print(f"flip {i + 1}/{a.flips}: reaction {rows[-1]['reaction']:.1f} ms, ping {pings[-1]:.1f} ms",
                      file=sys.stderr)
            ok = True
        except BaseException:
            print(f"failed; logs kept in {workdir}", file=sys.stderr)
            raise
    if ok and not a.keep:
        shutil.rmtree(workdir, ignore_errors=True)

    def col(key: str) -> list[float]:
        return [r[key] for r in rows]

    reaction = col("reaction")
    print(f"operator reaction: {n} prefork workers (concurrency 1), {a.flips} flips after 1 warm-up, "
          f"settleSeconds {a.settle:g}")
    print("  timed: status PATCH response -> operator holds the last worker's pause confirmation (its log)")
    print(f"{'':26s} {'median':>8s} {'p99':>8s} {'max':>8s}")
    for name, values in (("reaction", reaction), ("ping baseline", pings)):
        print(f"{name:26s} {statistics.median(values):6.1f}ms {pct(values, 0.99):6.1f}ms {max(values):6.1f}ms")
    print("  of which (reaction):")
    for name, key in (("API -> operator handler", "to_handler"), ("handler -> confirmed", "handler_to_confirmed"),
                      ("last worker applied", "last_applied")):
        values = col(key)
        print(f"  {name:24s} {statistics.median(values):6.1f}ms {pct(values, 0.99):6.1f}ms {max(values):6.1f}ms")
    print(f"  (status PATCH round trip median {statistics.median(col('patch_rtt')):.1f} ms; 'applied': the "
          f"workers' own log lines; handler: the event time in the blip id)")
    print(f"ratio reaction/ping: median {statistics.median(reaction) / statistics.median(pings):.2f}, "
          f"p99 {pct(reaction, 0.99) / pct(pings, 0.99):.2f}")
    p99 = pct(reaction, 0.99)
    verdict = "met" if p99 < GOAL_P99_MS else "NOT met"
    print(f"goal: reaction p99 < {GOAL_P99_MS:.0f} ms: {verdict} ({p99:.1f} ms"
          + (f"; with {a.flips} flips p99 is the largest value)" if a.flips < 100 else ")"))


if __name__ == "__main__":
    main()
