"""The seam and the patcher against small hosts built here: shape checks refuse loudly at
install time, originals live in closures, uninstall restores exactly what was there.

The real proof is the end-to-end suite on the reference app; these pin the mechanics."""

import dataclasses
import logging
import sys
import types

import pytest
from celery import Celery

from blipguard.app_patch import context, patcher
from blipguard.app_patch.config import parse
from blipguard.app_patch.host import Host

PKG = "fakehost"


def make_host(**changes) -> dict:
    """An Antenna-shaped host in sys.modules; ``changes`` replace or delete (None) members."""

    @dataclasses.dataclass
    class JobStateProgress:
        remaining: int = 0
        total: int = 0
        processed: int = 0
        percentage: float = 0.0
        failed: int = 0

    class AsyncJobStateManager:
        TIMEOUT = 60

        def __init__(self, job_id):
            self.job_id = job_id
            self._pending_key = f"job:{job_id}:pending_images"
            self._total_key = f"job:{job_id}:pending_images_total"
            self._failed_key = f"job:{job_id}:failed_images"

        def _get_redis(self):
            raise AssertionError("not used here")

        def _get_pending_key(self, stage):
            return f"{self._pending_key}:{stage}"

        def update_state(self, processed_image_ids, stage, failed_image_ids=None):
            return "host update_state"

        def cleanup(self):
            return "host cleanup"

    class TaskQueueManager:
        nc = None

        async def acknowledge_task(self, reply_subject):
            return True

    class Job:
        objects = None
        logger = logging.getLogger("fakehost.job")

    app = Celery("fakehost", set_as_current=False)

    @app.task(bind=True, name="fakehost.tasks.process_nats_pipeline_result")
    def process_nats_pipeline_result(self, job_id, result_data, reply_subject):
        return "host body"

    calls, percentages = [], []

    def _fail_job(job_id, reason):
        calls.append(("fail", job_id, reason))

    def _ack_task_via_nats(reply_subject, job_logger):
        calls.append(("ack", reply_subject))

    def _update_job_progress(job_id, stage, progress_percentage, complete_state, **state_params):
        calls.append(("progress", stage, state_params))
        percentages.append(progress_percentage)

    members = {
        "state": {"AsyncJobStateManager": AsyncJobStateManager, "JobStateProgress": JobStateProgress},
        "tasks": {
            "process_nats_pipeline_result": process_nats_pipeline_result,
            "_fail_job": _fail_job,
            "_ack_task_via_nats": _ack_task_via_nats,
            "_update_job_progress": _update_job_progress,
        },
        "queue": {"TaskQueueManager": TaskQueueManager, "TASK_TTR": 30},
        "models": {"Job": Job},
    }
    for key, value in changes.items():
        module, _, name = key.partition("__")
        if value is None:
            members[module].pop(name)
        else:
            members[module][name] = value
    for module, names in members.items():
        mod = types.ModuleType(f"{PKG}.{module}")
        mod.__dict__.update(names)
        sys.modules[mod.__name__] = mod
    return {"calls": calls, "percentages": percentages, **{k: v for names in members.values() for k, v in names.items()}}


@pytest.fixture
def host_config():
    made = []

    def build(**changes):
        made.append(make_host(**changes))
        return made[-1], parse({
            "TARGETS": {
                "STATE_MANAGER": f"{PKG}.state.AsyncJobStateManager",
                "PROGRESS": f"{PKG}.state.JobStateProgress",
                "RESULT_TASK": f"{PKG}.tasks.process_nats_pipeline_result",
                "TASKS_MODULE": f"{PKG}.tasks",
                "QUEUE_MANAGER": f"{PKG}.queue.TaskQueueManager",
                "JOB_MODEL": f"{PKG}.models.Job",
            },
            "ACK_WAIT_SOURCE": f"{PKG}.queue.TASK_TTR",
            "RESULT_QUEUE": "ml_results",
        })

    yield build
    patcher.uninstall()
    for name in [m for m in sys.modules if m.startswith(f"{PKG}.")]:
        del sys.modules[name]


def test_a_fitting_host_is_patched_once_and_restored_exactly(host_config):
    host, cfg = host_config()
    manager, task, tasks = host["AsyncJobStateManager"], host["process_nats_pipeline_result"], sys.modules[f"{PKG}.tasks"]
    before = {
        "update_state": manager.__dict__["update_state"],
        "cleanup": manager.__dict__["cleanup"],
        "ack": host["TaskQueueManager"].__dict__["acknowledge_task"],
        "_ack_task_via_nats": tasks._ack_task_via_nats,
        "_update_job_progress": tasks._update_job_progress,
    }
    assert "run" not in vars(task)  # a plain Celery task: run lives on its class

    report = patcher.install(cfg)
    assert not report.refused and len(report.patched) == 6
    assert manager.update_state is not before["update_state"]
    assert task.run.__wrapped__ is not None and "run" in vars(task)
    assert patcher.install(cfg).already == report.patched  # idempotent

    patcher.uninstall()
    assert manager.__dict__["update_state"] is before["update_state"]
    assert manager.__dict__["cleanup"] is before["cleanup"]
    assert host["TaskQueueManager"].__dict__["acknowledge_task"] is before["ack"]
    assert tasks._ack_task_via_nats is before["_ack_task_via_nats"]
    assert tasks._update_job_progress is before["_update_job_progress"]
    assert "run" not in vars(task), "uninstall must remove the instance attribute, not leave a copy"
    assert task.run(1, {}, "subject") == "host body"


def test_the_pre_fix_guess_of_the_host_is_refused_at_install(host_config, caplog):
    """The shapes the old patch assumed: `_pending_key(stage)` as a method and no
    `_get_pending_key`; `_update_job_progress` without `complete_state`."""

    class OldManager:
        def __init__(self, job_id):
            self.job_id = job_id

        def _pending_key(self, stage):
            return f"job:{self.job_id}:pending_images:{stage}"

        def update_state(self, processed_image_ids, stage, failed_image_ids=None):
            pass

        def cleanup(self):
            pass

        def _get_redis(self):
            pass

    def _update_job_progress(job_id, stage, progress_percentage, **state_params):
        pass

    host, cfg = host_config(state__AsyncJobStateManager=OldManager, tasks___update_job_progress=_update_job_progress)
    with caplog.at_level(logging.WARNING, "blipguard.app_patch"):
        report = patcher.install(cfg)
    text = " ".join(report.refused)
    assert "has no method _get_pending_key()" in text
    assert "_total_key is not a string attribute" in text
    assert "_update_job_progress must take (job_id, stage, progress_percentage, complete_state, **kwargs)" in text
    assert not patcher.is_installed()
    assert OldManager.update_state.__name__ == "update_state" and "not patched" in caplog.text


def test_a_missing_helper_and_a_bad_ack_wait_are_named(host_config):
    _, cfg = host_config(tasks___fail_job=None, queue__TASK_TTR="thirty")
    problems = Host(cfg).shape_problems()
    assert any("has no helper '_fail_job'" in p for p in problems)
    assert any("TASK_TTR = 'thirty' is not an ack_wait" in p for p in problems)


def test_ack_wait_is_what_the_host_creates_consumers_with(host_config):
    _, cfg = host_config()
    assert Host(cfg).ack_wait() == 30.0  # the pre-fix platform's module fallback


class FakeClaim:
    def __init__(self, added, done, total=4):
        self.ids, self.added, self.done, self.total, self.counted, self.uncounted = ["7"], added, done, total, 0, 0

    def count(self):
        self.counted += 1
        return self.added, self.done

    def uncount(self):
        self.uncounted += 1


def test_each_images_result_counts_reach_progress_once(host_config):
    host, cfg = host_config()
    patcher.install(cfg)
    tasks = sys.modules[f"{PKG}.tasks"]
    counts = {"detections": 3, "classifications": 6, "captures": 1}
    counted, first = FakeClaim(added=0, done=3), FakeClaim(added=1, done=2)

    with context.running(context.TaskRun(job_id=1, claims={"results": counted})):  # a redelivery, counted
        tasks._update_job_progress(1, "results", 0.5, complete_state="SUCCESS", **counts)
        tasks._update_job_progress(1, "process", 0.5, complete_state="SUCCESS", processed=4)
    with context.running(context.TaskRun(job_id=1, claims={"results": first})):  # not counted yet
        tasks._update_job_progress(1, "results", 0.5, complete_state="SUCCESS", **counts)
    with context.running(context.TaskRun(job_id=1)):  # the host's own update_state ran
        tasks._update_job_progress(1, "results", 0.5, complete_state="SUCCESS", **counts)
    tasks._update_job_progress(1, "results", 0.5, complete_state="SUCCESS", **counts)  # outside a task

    assert host["calls"] == [
        ("progress", "results", {"detections": 0, "classifications": 0, "captures": 0}),
        ("progress", "process", {"processed": 4}),
        ("progress", "results", counts),
        ("progress", "results", counts),
        ("progress", "results", counts),
    ]
    assert (counted.counted, first.counted, first.uncounted) == (1, 1, 0)


def test_results_stage_completes_only_when_every_images_counts_are_in(host_config):
    host, cfg = host_config()
    patcher.install(cfg)
    tasks = sys.modules[f"{PKG}.tasks"]
    claim = FakeClaim(added=1, done=3, total=4)  # every image claimed, one still to be counted

    with context.running(context.TaskRun(job_id=1, claims={"results": claim})):
        tasks._update_job_progress(1, "results", 1.0, complete_state="SUCCESS", detections=1)
        tasks._update_job_progress(1, "results", progress_percentage=0.5, complete_state="SUCCESS")
    assert host["percentages"] == [0.75, 0.75]  # as far as counts are in, whatever the host's snapshot said

    # The write that brings the last counts in carries an older snapshot (3 of 4 claimed,
    # taken before the lock) than the write before it: the stage still completes.
    last = FakeClaim(added=1, done=4, total=4)
    with context.running(context.TaskRun(job_id=1, claims={"results": last})):
        tasks._update_job_progress(1, "results", 0.75, complete_state="SUCCESS", detections=1)
    assert host["percentages"][-1] == 1.0

    # Acked before this write (the pre-fix order): no redelivery would come; do not hold.
    with context.running(context.TaskRun(job_id=1, claims={"results": claim}, ack_attempted=True)):
        tasks._update_job_progress(1, "results", 1.0, complete_state="SUCCESS", detections=1)
    assert host["percentages"][-1] == 1.0


def test_a_failed_progress_write_leaves_its_counts_to_add(host_config):
    def failing(job_id, stage, progress_percentage, complete_state, **state_params):
        raise OSError("database went away")

    host, cfg = host_config(tasks___update_job_progress=failing)
    patcher.install(cfg)
    tasks = sys.modules[f"{PKG}.tasks"]
    claim = FakeClaim(added=1, done=1)
    with context.running(context.TaskRun(job_id=1, claims={"results": claim})):
        with pytest.raises(OSError):
            tasks._update_job_progress(1, "results", 0.25, complete_state="SUCCESS", detections=1)
    assert claim.uncounted == 1


class StalledClaim(FakeClaim):
    """A claim whose count reply is lost (the mark may be in) and whose Redis answers again
    after a few tries."""

    def __init__(self, fails_to_uncount: int):
        super().__init__(added=1, done=4)
        self.fails_to_uncount = fails_to_uncount

    def count(self):
        self.counted += 1
        raise ConnectionError("Timeout reading from 127.0.0.1:6379")

    def uncount(self):
        self.uncounted += 1
        if self.uncounted <= self.fails_to_uncount:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


def test_a_count_mark_whose_reply_was_lost_is_taken_back(host_config, monkeypatch):
    """Left in, the mark would let another delivery complete the stage without these counts."""
    host, cfg = host_config()
    patcher.install(cfg)
    monkeypatch.setattr(patcher.time, "sleep", lambda s: None)
    tasks = sys.modules[f"{PKG}.tasks"]
    claim = StalledClaim(fails_to_uncount=2)
    with context.running(context.TaskRun(job_id=1, claims={"results": claim})):
        with pytest.raises(ConnectionError):
            tasks._update_job_progress(1, "results", 0.25, complete_state="SUCCESS", detections=1)
    assert claim.uncounted == 3, "the unmark is tried again until Redis answers"
    assert "results" not in [c[1] for c in host["calls"]], "nothing was written"


def test_never_backwards_is_clamped_on_the_hosts_own_read_through_update_stage(host_config):
    """Where the host writes a stage through its progress's ``update_stage``, the patch clamps
    there, against the stage as the host just read it: processed and failed only grow,
    remaining only shrinks, and the patch reads nothing itself. Uninstall restores the method."""

    class Progress:
        stored = {"processed": 5, "failed": 1, "remaining": 3}

        def get_stage(self, key):
            return types.SimpleNamespace(params=[types.SimpleNamespace(key=k, value=v) for k, v in self.stored.items()])

        def update_stage(self, key, **values):
            Progress.written.append((key, values))

    Progress.written = []

    class Objects:
        def only(self, *a):
            raise AssertionError("the patch must not read the job itself")

    class Field:
        default = Progress

    class Job:
        objects = Objects()
        logger = logging.getLogger("fakehost.job")
        _meta = types.SimpleNamespace(get_field=lambda name: Field)

    def _update_job_progress(job_id, stage, progress_percentage, complete_state, **state_params):
        Progress().update_stage(stage, progress=progress_percentage, **state_params)
        Progress().update_stage(stage, processed=0)  # a second call of the host's own: not clamped

    original = Progress.update_stage
    host, cfg = host_config(models__Job=Job, tasks___update_job_progress=_update_job_progress)
    report = patcher.install(cfg)
    assert not report.refused and len(report.patched) == 6 and Progress.update_stage is not original
    tasks = sys.modules[f"{PKG}.tasks"]
    with context.running(context.TaskRun(job_id=1)):
        tasks._update_job_progress(1, "process", 0.4, complete_state="SUCCESS", processed=4, failed=2, remaining=6)
    Progress().update_stage("process", processed=1)  # outside the patched write: the host's as is
    assert Progress.written == [
        ("process", {"progress": 0.4, "processed": 5, "failed": 2, "remaining": 3}),
        ("process", {"processed": 0}),
        ("process", {"processed": 1}),
    ]
    patcher.uninstall()
    assert Progress.update_stage is original
