"""A processing service: pulls a job's tasks over HTTP and posts results back, in the
platform's API and payload shapes (``PipelineResultsResponse`` / ``PipelineResultsError``).
"""

import datetime
import json
import threading
import urllib.error
import urllib.request

from blipguard.harness.seed import CLASSIFIER, DETECTOR, PIPELINE_SLUG


def fake_result(image_id, image_url: str = "") -> dict:
    """A pipeline response for one image: a deterministic 1-3 detections, each with one
    terminal classification."""
    i = int(image_id)
    ts = datetime.datetime.now().isoformat()
    return {
        "pipeline": PIPELINE_SLUG,
        "algorithms": {},
        "total_time": 0.01,
        "source_images": [{"id": str(i), "url": image_url}],
        "detections": [
            {
                "source_image_id": str(i),
                "bbox": {"x1": float(k), "y1": float(k), "x2": float(k + 10), "y2": float(k + 10)},
                "algorithm": dict(DETECTOR),
                "timestamp": ts,
                "classifications": [
                    {
                        "classification": "Lepidoptera",
                        "labels": ["Lepidoptera", "not a moth"],
                        "scores": [0.9, 0.1],
                        "algorithm": dict(CLASSIFIER),
                        "terminal": True,
                        "timestamp": ts,
                    }
                ],
            }
            for k in range(i % 3 + 1)
        ],
    }


def error_result(image_id, error: str = "simulated model failure") -> dict:
    return {"error": error, "image_id": str(image_id)}


def expected_detections(image_ids) -> int:
    return sum(int(i) % 3 + 1 for i in image_ids)


class ProcessingService:
    """`threads` pollers; each reserves `batch_size` tasks and posts their results.

    `error_ids` get an error result; `payloads` maps an image id (int) to the exact result
    object to send (for malformed-payload tests). Auth: DRF ``Authorization: Token <key>``.
    """

    def __init__(
        self,
        base_url: str,
        job_id: int,
        token: str,
        batch_size: int = 8,
        threads: int = 2,
        error_ids=(),
        payloads: dict | None = None,
        idle_wait: float = 0.05,
        slow_first: dict | None = None,
        batch_seconds: float = 0.0,
    ):
        self.base_url = base_url.rstrip("/")
        self.job_id = job_id
        self.token = token
        self.batch_size = batch_size
        self.error_ids = {int(i) for i in error_ids}
        self.payloads = {int(k): v for k, v in (payloads or {}).items()}
        self.idle_wait = idle_wait
        # Inference time per batch: a real service is slower than result saving, so its
        # tasks do not outlive ack_wait while their results queue up.
        self.batch_seconds = batch_seconds
        # image id -> seconds: the first delivery of that image is answered only after
        # that long (a slow service: NATS redelivers it meanwhile, and both get answered).
        self.slow_first = {int(k): v for k, v in (slow_first or {}).items()}
        self._slowed: set[int] = set()
        self._timers: list[threading.Timer] = []
        self.stop_event = threading.Event()
        self.tasks_received = 0
        self.results_posted = 0
        self.results_refused = 0  # results in POSTs the API answered with an error
        self.errors: list[str] = []
        self.post_retries = 0  # result POSTs retried after a refused or reset connection
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True, name=f"sim-{i}") for i in range(threads)]

    def _request(self, path: str, body: dict | None = None) -> tuple[int, dict]:
        headers = {"Authorization": f"Token {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(f"{self.base_url}{path}", data=data, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            raw = e.read() or b"{}"
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, {"raw": raw[:200].decode(errors="replace")}

    def _job_status(self) -> str:
        status, body = self._request(f"/api/v2/jobs/{self.job_id}/")
        return body.get("status", "") if status == 200 else ""

    def result_for(self, task: dict):
        image_id = int(task["image_id"])
        if image_id in self.payloads:
            return self.payloads[image_id]
        if image_id in self.error_ids:
            return error_result(image_id)
        return fake_result(image_id, task.get("image_url", ""))

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                status, body = self._request(f"/api/v2/jobs/{self.job_id}/tasks/", {"batch_size": self.batch_size})
                if status == 404:
                    return
                tasks = body.get("tasks", []) if status == 200 else []
                if status != 200:
                    with self._lock:
                        self.errors.append(f"tasks POST {status}: {body}")
                if not tasks:
                    if self._job_status() in ("SUCCESS", "FAILURE", "REVOKED"):
                        return
                    self.stop_event.wait(self.idle_wait)
                    continue
                with self._lock:
                    self.tasks_received += len(tasks)
                if self.batch_seconds and self.stop_event.wait(self.batch_seconds):
                    return
                now = [t for t in tasks if not self._slow(t)]
                if now:
                    self._post_results(now)
            except (urllib.error.URLError, OSError, ValueError) as e:
                with self._lock:
                    self.errors.append(repr(e))
                self.stop_event.wait(self.idle_wait)

    def _slow(self, task: dict) -> bool:
        image_id = int(task["image_id"])
        with self._lock:
            if image_id not in self.slow_first or image_id in self._slowed:
                return False
            self._slowed.add(image_id)
            timer = threading.Timer(self.slow_first[image_id], self._post_results, args=([task],))
            timer.daemon = True
            self._timers.append(timer)
        timer.start()
        return True

    POST_ATTEMPTS = 3

    def _post_results(self, tasks: list[dict]) -> None:
        """POST results as a processing service does, retrying a connection the server
        refused or reset (its reserved tasks would otherwise wait out the whole ack_wait).
        Runs in its own threads too (slow answers): every failure ends in ``errors``."""
        results = [{"reply_subject": t["reply_subject"], "result": self.result_for(t)} for t in tasks]
        for attempt in range(1, self.POST_ATTEMPTS + 1):
            try:
                status, body = self._request(f"/api/v2/jobs/{self.job_id}/result/", {"results": results})
                break
            except (ConnectionRefusedError, ConnectionResetError) as e:
                if attempt == self.POST_ATTEMPTS:
                    with self._lock:
                        self.errors.append(f"result POST failed {attempt} times: {e!r}")
                    return
                with self._lock:
                    self.post_retries += 1
                self.stop_event.wait(0.2 * attempt)
            except (urllib.error.URLError, OSError, ValueError) as e:
                with self._lock:
                    self.errors.append(f"result POST: {e!r}")
                return
        with self._lock:
            if status == 200:
                self.results_posted += body.get("results_queued", 0)
            else:
                self.results_refused += len(results)  # NATS hands these tasks out again after ack_wait
                self.errors.append(f"result POST {status}: {body}")

    @property
    def done(self) -> bool:
        """Every polling thread has returned: the job ended (or the service was stopped)."""
        return not any(t.is_alive() for t in self._threads)

    def __enter__(self) -> "ProcessingService":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for t in self._threads:
            t.join(timeout=35)
        for timer in self._timers:
            timer.join(timeout=35)
