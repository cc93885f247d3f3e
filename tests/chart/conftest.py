"""Fixtures of the chart tests: Helm 4 and Helm 3, a chart copy with sample monitoring
files, and one real Kubernetes API server (etcd + kube-apiserver) for the install tests.
The kube tests' ``namespace``, ``stack_mirror`` and ``broker_secret`` (tests/kube/conftest.py)
serve here too, on this API server. Missing binaries make the tests fail (not skip):
`bash scripts/setup.sh`."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Iterator

import pytest

from blipguard.localstack.kube import KubeBinariesMissing, KubeServer, require_kube_binaries
from chart_helpers import CHART, HELMS, SAMPLE_ALERTS, SAMPLE_DASHBOARD, Helm, binary as _binary, suite_module

_kube_fixtures = suite_module("kube/conftest.py")
namespace = _kube_fixtures.namespace
stack_mirror = _kube_fixtures.stack_mirror
broker_secret = _kube_fixtures.broker_secret


@pytest.fixture(scope="session", params=HELMS)
def helm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """Each test that takes it runs with Helm 4 and with Helm 3."""
    return Helm(request.param, _binary(request.param), tmp_path_factory.mktemp(f"{request.param}-home"))


@pytest.fixture(scope="session")
def helm4(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm("helm", _binary("helm"), tmp_path_factory.mktemp("helm4-home"))


@pytest.fixture(scope="session")
def chart_with_monitoring(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the chart whose files/alerts and files/dashboards hold one sample rule file
    and one dashboard (whatever the repo's alerts/ and dashboards/ hold)."""
    chart = tmp_path_factory.mktemp("chart") / "blipguard"
    shutil.copytree(CHART, chart)
    for sub in ("alerts", "dashboards"):
        shutil.rmtree(chart / "files" / sub, ignore_errors=True)
        (chart / "files" / sub).mkdir(parents=True)
    (chart / "files" / "alerts" / "sample.yaml").write_text(SAMPLE_ALERTS)
    (chart / "files" / "dashboards" / "sample.json").write_text(SAMPLE_DASHBOARD)
    return chart


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeServer]:
    try:
        require_kube_binaries()
    except KubeBinariesMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    server = KubeServer(tmp_path_factory.mktemp("kube"))
    try:
        server.start()
        print(f"\nkube server started in {server.started_in:.2f}s", file=sys.__stderr__)
        yield server
    except BaseException:
        print(server.log_tail(), file=sys.__stderr__)
        raise
    finally:
        server.stop()
