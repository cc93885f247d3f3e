"""The worker metrics' names, label sets and settings (pure parts; the scrape of a real
worker is tests/observability/test_worker_metrics.py)."""

import logging

import pytest

from blipguard.app_patch import metrics, worker_metrics
from blipguard.app_patch.config import parse
from blipguard.app_patch.errors import ConfigurationError


def test_series_are_bounded_and_follow_conventions():
    for spec in metrics.SPECS:
        assert spec.name.startswith("blipguard_") and not spec.name.endswith("_total")
        assert all(label in metrics.LABELS for label in spec.labels), spec
    failures = metrics.BY_NAME["blipguard_job_failures"]
    assert metrics.label_sets(failures) == [
        {"reason": r, "during_blip": b} for r in metrics.TERMINAL_REASONS for b in ("true", "false")]
    assert "blipguard_job_failures_total" in metrics.exported_names()
    assert "blipguard_worker_paused" in metrics.exported_names()


def test_unknown_label_values_fold_into_other():
    assert metrics.dependency_label("postgres") == "other"
    assert metrics.dependency_label("redis") == "redis"
    assert metrics.stage_label(None) == "other"
    assert metrics.stage_label("results") == "results"


@pytest.mark.parametrize("value, message", [
    (0, "must be >= 1"), (70000, "must be <= 65535"), ("9100", "must be a number"), (9100.5, "whole number")])
def test_a_bad_metrics_port_is_named(value, message):
    with pytest.raises(ConfigurationError, match=r"BLIPGUARD\['METRICS_PORT'\]") as info:
        parse({"METRICS_PORT": value})
    assert message in str(info.value)


def test_a_port_without_a_multiprocess_directory_says_what_to_set(monkeypatch, caplog):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.delenv("prometheus_multiproc_dir", raising=False)
    with caplog.at_level(logging.ERROR, logger="blipguard.app_patch"):
        assert worker_metrics.start(parse({"METRICS_PORT": 9808})) is False
    assert "PROMETHEUS_MULTIPROC_DIR is unset" in caplog.text
    assert worker_metrics.start(parse({})) is False  # no port, no endpoint


def test_a_multiprocess_directory_that_cannot_be_created_is_named(monkeypatch, caplog, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(blocker / "prometheus"))
    with caplog.at_level(logging.ERROR, logger="blipguard.app_patch"):
        assert worker_metrics.start(parse({"METRICS_PORT": 9808})) is False
    assert "which cannot be created" in caplog.text and "no metrics endpoint started" in caplog.text


def test_a_missing_multiprocess_directory_is_created(monkeypatch, tmp_path):
    target = tmp_path / "not" / "yet"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(target))
    served = []
    monkeypatch.setattr(worker_metrics.metrics, "serve", lambda port, address: served.append(port))
    assert worker_metrics.start(parse({"METRICS_PORT": 9808})) is True
    assert target.is_dir() and served == [9808]
