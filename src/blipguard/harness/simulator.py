"""A processing service: pulls a job's tasks over HTTP and posts results back."""

import json
import threading
import urllib.error
import urllib.request


def fake_result(image_id: int) -> dict:
    """A pipeline response for one image: a deterministic 1-3 detections."""
    n = image_id % 3 + 1
    return {
        "source_images": [{"id": image_id}],
        "detections": [
            {"source_image_id": image_id, "bbox": [k, k, k + 10, k + 10], "label": "moth", "score": 0.9}
            for k in range(n)
        ],
    }


def expected_detections(image_ids) -> int:
    return sum(i % 3 + 1 for i in image_ids)


class ProcessingService:
    """`threads` pollers; each reserves `batch_size` tasks and posts their results.

    `error_ids` get an error result; `payloads` maps an image id to the exact result
    object to send (for malformed-payload tests).
    """

    def __init__(
        self,
        base_url: str,
        job_id: int,
        batch_size: int = 8,
        threads: int = 2,
        error_ids=(),
        payloads: dict | None = None,
        idle_wait: float = 0.05,
    ):
        self.base_url = base_url.rstrip("/")
        self.job_id = job_id
        self.batch_size = batch_size
        self.error_ids = set(error_ids)
        self.payloads = payloads or {}
        self.idle_wait = idle_wait
        self.stop_event = threading.Event()
        self.tasks_received = 0
        self.results_posted = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True, name=f"sim-{i}") for i in range(threads)]

    def _post(self, path: str, body: dict) -> tuple[int, dict]:
        req = urllib.request.Request(
            f"{self.base_url}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def _job_status(self) -> str:
        with urllib.request.urlopen(f"{self.base_url}/api/v2/jobs/{self.job_id}/", timeout=30) as resp:
            return json.loads(resp.read())["status"]

    def result_for(self, task: dict):
        image_id = task["image_id"]
        if image_id in self.payloads:
            return self.payloads[image_id]
        if image_id in self.error_ids:
            return {"error": "simulated model failure", "image_id": image_id}
        return fake_result(image_id)

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                status, body = self._post(f"/api/v2/jobs/{self.job_id}/tasks/", {"batch_size": self.batch_size})
                tasks = body.get("tasks", []) if status == 200 else []
                if status == 404:
                    return  # the job's stream is gone
                if not tasks:
                    if self._job_status() in ("SUCCESS", "FAILURE"):
                        return
                    self.stop_event.wait(self.idle_wait)
                    continue
                results = [{"reply_subject": t["reply_subject"], "result": self.result_for(t)} for t in tasks]
                status, body = self._post(f"/api/v2/jobs/{self.job_id}/result/", {"results": results})
                with self._lock:
                    self.tasks_received += len(tasks)
                    if status == 202:
                        self.results_posted += len(results)
                    else:
                        self.errors.append(f"result POST {status}: {body}")
            except (urllib.error.URLError, OSError, ValueError) as e:
                with self._lock:
                    self.errors.append(repr(e))
                self.stop_event.wait(self.idle_wait)

    def __enter__(self) -> "ProcessingService":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for t in self._threads:
            t.join(timeout=35)

