"""Start each worker host's metrics endpoint, and retire its prefork children's samples."""

from __future__ import annotations

import logging
import os

from . import metrics

logger = logging.getLogger("blipguard.app_patch")

_registered = False


def register(config) -> None:
    """Connect the Celery worker signals once (idempotent). No port: the counters are still
    kept (any exporter of the host's own can read the multiprocess directory)."""
    global _registered
    if _registered:
        return
    from celery import signals

    def started(**kwargs) -> None:
        start(config)

    def child_exited(pid=None, **kwargs) -> None:
        metrics.process_dead(pid or os.getpid())

    signals.worker_init.connect(started, weak=False)
    signals.worker_process_shutdown.connect(child_exited, weak=False)
    _registered = True


def start(config) -> bool:
    """In the worker's main process, before the pool forks."""
    path = metrics.multiprocess_dir()
    if config.metrics_port is None:
        return False
    problem = "unset" if path is None else None
    if path is not None and not os.path.isdir(path):
        try:
            os.makedirs(path, exist_ok=True)  # a path in the image that nobody created yet
        except OSError as e:
            problem = f"{path!r}, which cannot be created ({e.strerror})"
    if problem:
        logger.error(
            "blipguard: METRICS_PORT is %s but PROMETHEUS_MULTIPROC_DIR is %s: set it to an empty, "
            "writable directory in the worker's environment; no metrics endpoint started",
            config.metrics_port, problem)
        return False
    metrics.clear_dir(path)
    metrics.initialize()
    metrics.serve(config.metrics_port, config.metrics_address)
    logger.info("blipguard: worker metrics on %s:%s", config.metrics_address, config.metrics_port)
    return True
