"""The app patch's Prometheus metrics, scraped from a real prefork Celery worker host.

One worker host (two prefork children) serves its endpoint from PROMETHEUS_MULTIPROC_DIR:
every series exists at zero from the start; a Redis outage carried by retries shows as
transient errors and retries with no terminal failure; genuine state loss shows as one.
"""

import shutil
import subprocess
import urllib.request

import pytest

from blipguard.app_patch import metrics
from blipguard.harness.jobrun import run_job
from blipguard.localstack import faults
from blipguard.localstack.procs import free_port, wait_until

pytestmark = [pytest.mark.observability, pytest.mark.stack]

ENV = {"BLIPGUARD_SOCKET_TIMEOUT": "1", "BLIPGUARD_CONNECT_TIMEOUT": "1", "BLIPGUARD_REDIS_RETRIES": "0"}


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value, labels in the exposition's order."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def total(s: dict[str, float], name: str, **labels: str) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in s.items() if k.split("{")[0] == name and all(w in k for w in want))


@pytest.fixture
def metered(worker_pool, platform, tmp_path):
    port = free_port()
    mpdir = tmp_path / "prom"
    mpdir.mkdir()
    (mpdir / "stale_999999.db").write_bytes(b"left by an earlier run")  # cleared at start
    workers = worker_pool.ensure(platform.patched_settings, count=1, concurrency=2, **ENV,
                                 BLIPGUARD_METRICS_PORT=str(port), PROMETHEUS_MULTIPROC_DIR=str(mpdir))
    url = f"http://127.0.0.1:{port}/metrics"
    wait_until(lambda: _answers(url), 30, "the worker's metrics endpoint")
    yield url
    worker_pool.stop()  # the next test's workers must not inherit this port and directory


def _answers(url: str) -> bool:
    try:
        scrape(url)
        return True
    except OSError:
        return False


def test_every_series_exists_at_zero_and_is_well_formed(metered):
    text = scrape(metered)
    s = samples(text)
    for spec in metrics.SPECS:
        name = spec.name + "_total" if spec.kind == "counter" else spec.name
        for labels in metrics.label_sets(spec):
            assert total(s, name, **labels) == 0 and any(k.split("{")[0] == name for k in s), (name, labels)
    assert sum(1 for k in s if k.startswith("blipguard_job_failures_total")) == 4
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with the Debian prometheus package (scripts/setup.sh)"
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check.stdout + check.stderr


def test_a_carried_outage_counts_transient_errors_and_no_terminal_failure(metered, stack, web, redis_direct, platform):
    outcome = run_job(web.url, redis_direct, 60, fault=lambda: faults.redis_down_for(stack, 3.0).join(),
                      fault_at=0.3, settle=lambda: stack.rabbitmq.queue_depth(platform.result_queue) == 0)
    print(outcome.summary())
    assert outcome.status == "SUCCESS"
    s = samples(scrape(metered))
    print({k: v for k, v in s.items() if v and k.startswith("blipguard_")})
    assert total(s, "blipguard_transient_errors_total", dependency="redis") >= 1
    assert total(s, "blipguard_result_retries_total") + total(s, "blipguard_results_held_back_total") >= 1
    assert total(s, "blipguard_job_failures_total") == 0
    assert total(s, "blipguard_retries_exhausted_total") == 0
    # Every image's result went through a result task that ran to its end (prefork children summed).
    assert total(s, "blipguard_results_processed_total") >= outcome.processed
    assert total(s, "blipguard_worker_paused") == 0


def test_genuine_state_loss_counts_a_terminal_failure_outside_a_blip(metered, stack, web, redis_direct, platform):
    def lose_state():
        from ami.jobs.models import Job

        faults.delete_job_state(stack, Job.objects.order_by("-pk").values_list("pk", flat=True).first())

    outcome = run_job(web.url, redis_direct, 40, fault=lose_state, fault_at=0.3,
                      settle=lambda: stack.rabbitmq.queue_depth(platform.result_queue) == 0)
    assert outcome.status == "FAILURE"
    s = samples(scrape(metered))
    assert total(s, "blipguard_job_failures_total", reason="state_missing", during_blip="false") == 1, "one job"
    assert total(s, "blipguard_job_failures_total", during_blip="true") == 0
    assert total(s, "blipguard_transient_errors_total") == 0
