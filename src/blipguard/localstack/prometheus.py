"""A real Prometheus server (Debian's ``prometheus``) on a free 127.0.0.1 port: scrapes
the given targets under fixed job names, evaluates rule files as they are, and answers
its HTTP API (``/api/v1/query``, ``/api/v1/alerts``, ``/api/v1/targets``).

Its first scrape comes about 5 s after the start (the target sync period of its service
discovery, not tunable): start it before the work it should watch.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .procs import free_port, log_tail, spawn, stop_pid, wait_until
from .server import ManagedServer


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if not found:
        raise FileNotFoundError("prometheus not found on PATH (Debian's prometheus package: scripts/setup.sh)")
    return found


class PrometheusServer(ManagedServer):
    name = "prometheus"

    """``prometheus`` in the foreground; its config and TSDB live in ``workdir``.

    ``scrape_jobs`` maps a scrape job name (the ``job`` label) to its ``host:port``
    targets; ``rule_files`` are loaded unchanged (absolute paths).
    """

    def __init__(
        self,
        workdir: Path,
        scrape_jobs: Mapping[str, Sequence[str]],
        rule_files: Iterable[Path | str] = (),
        interval: str = "1s",
        honor_labels: bool = True,
    ) -> None:
        self.workdir = Path(workdir)
        self.scrape_jobs = {job: list(targets) for job, targets in scrape_jobs.items()}
        self.rule_files = [str(Path(f).resolve()) for f in rule_files]
        self.interval = interval
        self.honor_labels = honor_labels
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._lock = threading.RLock()
        self.log_path = self.workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict:
        return {
            "global": {"scrape_interval": self.interval, "scrape_timeout": self.interval,
                       "evaluation_interval": self.interval},
            "rule_files": self.rule_files,
            "scrape_configs": [
                # honor_labels: the operator's own `namespace` label stays as it is (the
                # chart's ServiceMonitor sets honorLabels too).
                {"job_name": job, "honor_labels": self.honor_labels, "static_configs": [{"targets": targets}]}
                for job, targets in self.scrape_jobs.items()
            ],
        }

    def _write_config(self) -> Path:
        path = self.workdir / "prometheus.yml"
        path.write_text(json.dumps(self.config(), indent=1))  # JSON is YAML
        return path

    def is_up(self) -> bool:
        if not self.port:
            return False
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=0.5) as resp:
                return resp.status == 200
        except OSError:
            return False

    def start(self) -> None:
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                return
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.port = self.port or free_port()
            argv = [
                prometheus_binary(),
                f"--config.file={self._write_config()}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=info",
            ]
            self.proc = spawn(argv, self.log_path, cwd=self.workdir)
            wait_until(self._ready, 30, f"prometheus on port {self.port}", 0.02)

    def stop(self) -> None:
        with self._lock:
            if self.proc is None:
                return
            proc, self.proc = self.proc, None
            stop_pid(proc.pid)

    def log_tail(self, chars: int = 3000) -> str:
        return log_tail(self.log_path, chars)

    def __enter__(self) -> "PrometheusServer":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- HTTP API

    def api(self, path: str, **params: object) -> object:
        """GET ``/api/v1/<path>``; return its ``data`` (raise on an error status)."""
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as e:  # 400/422 carry the error in the body
            body = json.loads(e.read() or b"{}")
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """An instant query's vector: ``[{"metric": {...}, "value": [ts, "v"]}, ...]``."""
        data = self.api("query", query=expr, time=at)
        assert isinstance(data, dict)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def value(self, expr: str, at: float | None = None) -> float | None:
        """The single value of ``expr`` (None when the result is empty)."""
        result = self.query(expr, at)
        if not result:
            return None
        if len(result) > 1:
            raise ValueError(f"{expr!r} returned {len(result)} series: {result}")
        return float(result[0]["value"][1])

    def alerts(self) -> list[dict]:
        """The active alerts (pending and firing) as ``/api/v1/alerts`` lists them."""
        data = self.api("alerts")
        assert isinstance(data, dict)
        return data["alerts"]

    def active(self, alertname: str | None = None) -> list[dict]:
        return [a for a in self.alerts() if alertname is None or a["labels"].get("alertname") == alertname]

    def targets(self) -> list[dict]:
        data = self.api("targets", state="active")
        assert isinstance(data, dict)
        return data["activeTargets"]

    def rule_groups(self) -> list[dict]:
        data = self.api("rules")
        assert isinstance(data, dict)
        return data["groups"]

    def targets_up(self) -> bool:
        """Every configured target scraped successfully at least once."""
        targets = self.targets()
        want = sum(len(t) for t in self.scrape_jobs.values())
        return len(targets) == want and all(t["health"] == "up" for t in targets)

    def wait_targets_up(self, timeout: float = 30) -> None:
        wait_until(self.targets_up, timeout, "prometheus to scrape every target", interval=0.2)

    def wait_scraped_after(self, t: float, timeout: float = 10) -> None:
        """Wait until every target has been scraped (the scrape started) after the wall time ``t``."""

        def scraped() -> bool:
            return all(_rfc3339(tg.get("lastScrape", "")) > t for tg in self.targets())

        wait_until(scraped, timeout, "a scrape of every target after the last change", interval=0.1)

    def wait_evaluated_after(self, t: float, timeout: float = 15) -> None:
        """Wait until every rule group has been evaluated after the wall time ``t``
        (the alerts then reflect what was scraped up to then)."""

        def evaluated() -> bool:
            stamps = [g.get("lastEvaluation", "") for g in self.rule_groups()]
            return bool(stamps) and all(_rfc3339(s) > t for s in stamps)

        wait_until(evaluated, timeout, "a rule evaluation after the last change", interval=0.1)


def _rfc3339(stamp: str) -> float:
    """Prometheus' RFC 3339 timestamps (nanoseconds) as Unix seconds; 0 if unset."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", stamp or "")
    if not m or stamp.startswith("0001-"):
        return 0.0
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return dt.datetime.fromisoformat(m.group(1) + zone).timestamp() + float(m.group(2) or 0)
