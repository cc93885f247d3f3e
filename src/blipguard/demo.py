"""The demo: the incident on the reference platform as it was, then the same blip with
blipguard's app_patch installed (pre-fix platform by default; ``--platform current`` shows
what the current platform's own retries do, with and without the patch)."""

import sys
import tempfile
import time
from pathlib import Path

from blipguard.harness.django_env import app_env, setup_django
from blipguard.harness.jobrun import JobOutcome, run_job
from blipguard.localstack import CeleryWorkers, LocalStack, faults
from blipguard.refapp import SETTINGS

# platform -> (settings unpatched, settings patched, result queue)
PLATFORMS = {
    "pre-fix": (SETTINGS["pre"], SETTINGS["pre_patched"], "antenna"),
    "current": (SETTINGS["head"], SETTINGS["head_patched"], "ml_results"),
}


def _say(text: str = "") -> None:
    print(text, flush=True)


# The demo's faults, by name: each builds the action fired at 30% progress.
FAULTS = {
    # The `process` stage's state update on the wire (SREM pre-fix, the claim script patched).
    "reset": lambda stack: lambda: faults.inflight_reset(stack, match=b"pending_images:process"),
    "restart": lambda stack: lambda: faults.redis_down_for(stack, 2.0).join(),
    "none": lambda stack: None,
}


def _telling_lines(o: JobOutcome, most: int = 4) -> list[str]:
    """The job-log lines that explain the outcome, each message once."""
    keys = ("marked as FAILURE", "Redis connection error", "Transient", "Retrying", "Recovered",
            "not found in Redis", "Acknowledged again")
    seen, picked = set(), []
    for line in o.log:
        message = line.split("] ", 1)[-1]
        if any(k in message for k in keys) and message not in seen:
            seen.add(message)
            picked.append(line)
    if len(picked) > most:
        picked = picked[: most - 1] + picked[-1:]
    return picked


def run_demo(images: int = 300, fault: str = "reset", apps: tuple[str, ...] = ("unpatched", "patched"),
             platform: str = "pre-fix") -> int:
    if fault not in FAULTS:
        raise SystemExit(f"blipguard demo: unknown --fault {fault!r}; choose one of {sorted(FAULTS)}")
    workdir = Path(tempfile.mkdtemp(prefix="blipguard-demo-"))
    t0 = time.monotonic()
    _say(f"Starting the local stack (PostgreSQL, Redis, NATS JetStream, RabbitMQ) in {workdir} ...")
    outcomes: dict[str, JobOutcome] = {}
    with LocalStack(workdir / "stack") as stack:
        _say(f"  stack up in {stack.started_in:.1f}s")
        unpatched, patched, queue = PLATFORMS[platform]
        settings = {"unpatched": unpatched, "patched": patched}
        setup_django(stack.env(), unpatched)
        from blipguard.harness.webserver import WebServer

        redis = stack.redis.client()
        with WebServer() as web:
            for name in apps:
                workers = CeleryWorkers("config", queue, app_env(stack.env(), settings[name]), workdir / name)
                try:
                    workers.start(count=2, concurrency=2)
                    workers.wait_ready(60)
                    _say(f"\n[{name}] {platform} platform, a {images}-image job; fault at 30% progress: {fault}")
                    outcome = run_job(
                        web.url,
                        redis,
                        images,
                        fault=FAULTS[fault](stack),
                        fault_at=0.3,
                        settle=lambda: stack.rabbitmq.queue_depth(queue) == 0,
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
        _say(f"  {name:9s} -> {o.status:7s} {o.processed}/{o.total} processed, {lost} images never processed")
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="blipguard demo", description=__doc__)
    p.add_argument("--images", type=int, default=300,
                   help="images in the job (the incident's job had 840; the pre-fix platform saves ~6/s here)")
    p.add_argument("--platform", choices=sorted(PLATFORMS), default="pre-fix")
    p.add_argument("--fault", choices=sorted(FAULTS), default="reset",
                   help="reset (in-flight connection reset), restart (Redis down 2 s), none")
    p.add_argument("--app", choices=["unpatched", "patched", "both"], default="both")
    a = p.parse_args(argv)
    if a.images < 1:
        p.error("--images must be >= 1")
    apps = ("unpatched", "patched") if a.app == "both" else (a.app,)
    return run_demo(a.images, a.fault, apps, a.platform)


if __name__ == "__main__":
    sys.exit(main())
