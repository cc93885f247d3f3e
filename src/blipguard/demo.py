"""The demo: the incident on the pre-fix app, then the same blip on the patched app."""

import sys
import tempfile
import time
from pathlib import Path

from blipguard.harness.django_env import app_env, setup_django
from blipguard.harness.jobrun import JobOutcome, run_job
from blipguard.localstack import CeleryWorkers, LocalStack, faults

APPS = {"pre-fix": "refsite.settings", "patched": "refsite.settings_patched"}


def _say(text: str = "") -> None:
    print(text, flush=True)


# The demo's faults, by name: each builds the action fired at 30% progress.
FAULTS = {
    "reset": lambda stack: lambda: faults.inflight_reset(stack),
    "restart": lambda stack: lambda: faults.redis_down_for(stack, 2.0).join(),
    "none": lambda stack: None,
}


def _telling_lines(o: JobOutcome, most: int = 4) -> list[str]:
    """The job-log lines that explain the outcome, each message once."""
    keys = ("FAILURE", "Redis", "redis", "Retrying", "Recovered", "completed")
    seen, picked = set(), []
    for line in o.log:
        message = line.split("] ", 1)[-1]
        if any(k in message for k in keys) and message not in seen:
            seen.add(message)
            picked.append(line)
    if len(picked) > most:
        picked = picked[: most - 1] + picked[-1:]
    return picked


def run_demo(images: int = 840, fault: str = "reset", apps: tuple[str, ...] = ("pre-fix", "patched")) -> int:
    if fault not in FAULTS:
        raise SystemExit(f"blipguard demo: unknown --fault {fault!r}; choose one of {sorted(FAULTS)}")
    workdir = Path(tempfile.mkdtemp(prefix="blipguard-demo-"))
    t0 = time.monotonic()
    _say(f"Starting the local stack (PostgreSQL, Redis, NATS JetStream, RabbitMQ) in {workdir} ...")
    outcomes: dict[str, JobOutcome] = {}
    with LocalStack(workdir / "stack") as stack:
        _say(f"  stack up in {stack.started_in:.1f}s")
        setup_django(stack.env())
        from blipguard.harness.webserver import WebServer

        redis = stack.redis.client()
        with WebServer() as web:
            for name in apps:
                workers = CeleryWorkers("refsite", "ml_results", app_env(stack.env(), APPS[name]), workdir / name)
                try:
                    workers.start(count=2, concurrency=2)
                    workers.wait_ready(60)
                    _say(f"\n[{name}] a {images}-image job; fault at 30% progress: {fault}")
                    outcome = run_job(
                        web.url,
                        redis,
                        images,
                        fault=FAULTS[fault](stack),
                        fault_at=0.3,
                        settle=lambda: stack.rabbitmq.queue_depth("ml_results") == 0,
                    )
                finally:
                    workers.stop()
                outcomes[name] = outcome
                _say(f"[{name}] {outcome.summary()}")
                for line in _telling_lines(outcome):
                    _say(f"[{name}]   job log: {line}")
        redis.close()
    _say(f"\nDone in {time.monotonic() - t0:.0f}s.")
    for name, o in outcomes.items():
        lost = o.total - o.processed
        _say(f"  {name:8s} -> {o.status:7s} {o.processed}/{o.total} processed, {lost} images never processed")
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="blipguard demo", description=__doc__)
    p.add_argument("--images", type=int, default=840)
    p.add_argument("--fault", choices=sorted(FAULTS), default="reset",
                   help="reset (in-flight connection reset), restart (Redis down 2 s), none")
    p.add_argument("--app", choices=["pre-fix", "patched", "both"], default="both")
    a = p.parse_args(argv)
    if a.images < 1:
        p.error("--images must be >= 1")
    apps = ("pre-fix", "patched") if a.app == "both" else (a.app,)
    return run_demo(a.images, a.fault, apps)


if __name__ == "__main__":
    sys.exit(main())
