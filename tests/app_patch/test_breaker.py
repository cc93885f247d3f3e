"""The in-worker breaker: the pure state machine, the result task's edge (on_transient /
on_success, real board, forked children) and the main process's probe loop and lease
timers (real threads and timers, Celery's consumer and control replaced by fakes)."""

import multiprocessing
import os
import threading
import time
from types import SimpleNamespace

import pytest

from blipguard.app_patch.config import parse
from blipguard.app_patch.pause import board, breaker
from blipguard.app_patch.pause.breaker import Decision, Event, State, step
from blipguard.app_patch.pause.leases import BREAKER
from blipguard.app_patch.pause.worker import PAUSE, RESUME, Controller
from blipguard.localstack.procs import wait_until

pytestmark = pytest.mark.pause


# -- the state machine ----------------------------------------------------------------
def run(events, threshold=3, state=State()):
    decisions = []
    for event in events:
        state, decision = step(state, event, threshold)
        decisions.append(decision)
    return state, decisions


def test_trips_at_the_threshold_and_not_again_while_holding():
    state, decisions = run([Event.TRANSIENT] * 5)
    assert decisions == [None, None, Decision.TRIP, None, None]
    assert state == State(failures=5, holding=True)


def test_a_success_ends_the_streak():
    _, decisions = run([Event.TRANSIENT, Event.TRANSIENT, Event.SUCCESS, Event.TRANSIENT, Event.TRANSIENT])
    assert Decision.TRIP not in decisions


def test_holds_for_an_outage_of_any_length_and_resumes_on_the_first_good_probe():
    outage = [Event.PROBE_FAILED, Event.LEASE_EXPIRED, Event.TRANSIENT] * 10_000
    state, decisions = run([Event.TRANSIENT] * 3 + outage + [Event.PROBE_OK])
    assert decisions[3:-1] == [Decision.EXTEND, Decision.EXTEND, None] * 10_000
    assert decisions[-1] is Decision.RESUME and state == State(0, False)


def test_a_streak_that_outlives_a_hold_trips_again():
    # The hold ended without a good probe (overridden by on-call): errors keep coming.
    state, decisions = run([Event.TRANSIENT] * 3)
    state, decisions = run([Event.TRANSIENT], state=State(state.failures, holding=False))
    assert decisions == [Decision.TRIP]


def test_probe_events_without_a_hold_change_nothing():
    assert run([Event.PROBE_OK, Event.PROBE_FAILED, Event.LEASE_EXPIRED])[1] == [None] * 3


def test_threshold_is_checked():
    with pytest.raises(Exception, match="BREAKER_THRESHOLD"):
        step(State(), Event.TRANSIENT, 0)
    with pytest.raises(Exception, match="BREAKER_THRESHOLD"):
        step(State(), Event.TRANSIENT)


def test_renewal_is_due_at_half_the_lease():
    assert breaker.renewal(9, 15, cadence=2) is None
    assert breaker.renewal(7.5, 15, cadence=2) == 15 and breaker.renewal(0, 15, cadence=2) == 15


def test_a_short_lease_is_extended_past_the_next_probes():
    # lease 1 s, a probe every 1 s taking up to 1 s: each extension outlasts the next probe
    assert breaker.renewal(0.9, 1, cadence=2) == 6
    assert breaker.renewal(4.1, 1, cadence=2) is None and breaker.renewal(4, 1, cadence=2) == 6


# -- the result task's edge ----------------------------------------------------------
@pytest.fixture
def fresh_board(monkeypatch):
    b = board.Board()
    monkeypatch.setattr(board, "_board", b)
    return b


class Broadcasts:
    def __init__(self):
        self.sent = []

    def broadcast(self, command, arguments=None, destination=None, **kw):
        self.sent.append((command, arguments, destination))


def fake_task(control, hostname="w1@host"):
    return SimpleNamespace(app=SimpleNamespace(control=control), request=SimpleNamespace(hostname=hostname))


def test_on_transient_trips_the_worker_and_holds_its_children_at_once(fresh_board):
    cfg, control = parse({"BREAKER_THRESHOLD": 3, "BREAKER_LEASE": 15.0}), Broadcasts()
    for _ in range(2):
        breaker.on_transient(fake_task(control), "redis", ConnectionError("refused"), cfg)
    assert control.sent == [] and board.paused_for() is None
    breaker.on_transient(fake_task(control), "redis", ConnectionError("refused"), cfg)
    [(command, args, destination)] = control.sent
    assert (command, destination) == (PAUSE, ["w1@host"])
    assert args["source"] == BREAKER and args["lease"] == 15.0 and "ConnectionError: refused" in args["reason"]
    held = board.paused_for()
    assert held["dependency"] == "redis" and held["until"] > time.time() + 14  # the task is held back, no retry spent
    breaker.on_transient(fake_task(control), "redis", ConnectionError("refused"), cfg)
    assert len(control.sent) == 1  # already holding


def test_on_transient_trips_again_when_the_hold_ended_but_errors_go_on(fresh_board):
    cfg, control = parse({"BREAKER_THRESHOLD": 3}), Broadcasts()
    for _ in range(3):
        breaker.on_transient(fake_task(control), "redis", TimeoutError(), cfg)
    fresh_board.update(lambda d: {**d, "leases": {}, "breaker": {}})  # the hold ended, the outage did not
    breaker.on_transient(fake_task(control), "redis", TimeoutError(), cfg)
    assert len(control.sent) == 2


def test_on_success_resets_the_streak(fresh_board):
    cfg, control = parse({"BREAKER_THRESHOLD": 2}), Broadcasts()
    breaker.on_transient(fake_task(control), "redis", TimeoutError(), cfg)
    breaker.on_success()
    breaker.on_transient(fake_task(control), "redis", TimeoutError(), cfg)
    assert control.sent == [] and fresh_board.read()["failures"] == {"redis": 1}


def test_on_success_reads_the_board_once_and_ends_quiet_sentry_blips_too(fresh_board, monkeypatch):
    from blipguard.app_patch import sentry

    now = time.time()
    fresh_board.update(lambda d: {**d, "failures": {"redis": 2},
                                  "sentry": {"streaks": {"redis": {"last": now - 2 * sentry.QUIET}}, "sent": []}})
    reads = []
    read = fresh_board.read
    monkeypatch.setattr(fresh_board, "read", lambda: reads.append(1) or read())
    breaker.on_success()
    assert len(reads) == 1, "one board read per result for the breaker and Sentry"
    data = read()
    assert data["failures"] == {} and data["sentry"]["streaks"] == {}


@pytest.mark.parametrize("settings, dependency", [({"BREAKER": False}, "redis"), ({}, "postgres")])
def test_on_transient_ignores_a_disabled_breaker_and_unprobed_dependencies(fresh_board, settings, dependency):
    cfg, control = parse({**settings, "BREAKER_THRESHOLD": 1}), Broadcasts()
    breaker.on_transient(fake_task(control), dependency, TimeoutError(), cfg)
    assert control.sent == [] and board.paused_for() is None


def test_the_streak_is_counted_across_the_workers_children(fresh_board):
    cfg = parse({"BREAKER_THRESHOLD": 3})
    r, w = os.pipe()

    class PipeControl:
        def broadcast(self, command, arguments=None, destination=None, **kw):
            os.write(w, command.encode() + b"\n")

    for _ in range(3):
        child = multiprocessing.get_context("fork").Process(
            target=breaker.on_transient, args=(fake_task(PipeControl()), "redis", TimeoutError(), cfg)
        )
        child.start()
        child.join(10)
        assert child.exitcode == 0
    os.close(w)
    assert os.read(r, 1000) == PAUSE.encode() + b"\n"
    assert board.paused_for()["dependency"] == "redis"


# -- the main process: probe loop, lease timers, control commands -------------------
class FakeWorker:
    """A consumer whose control messages to itself and timers run on one 'event loop'
    (a lock), as Celery's pidbox and timer would."""

    def __init__(self, controller: Controller, queue="ml_results"):
        self.loop = threading.Lock()
        self.hostname = "w1@host"
        self.controller = controller
        self.consuming = {queue}
        self.app = SimpleNamespace(control=self, amqp=SimpleNamespace(queues={}))
        self.timer = self
        self.timers: list[threading.Timer] = []
        self.sent: list[tuple[str, dict]] = []

    def cancel_task_queue(self, q):
        self.consuming.discard(q)

    def add_task_queue(self, q):
        self.consuming.add(q)

    def call_after(self, seconds, fn, args):
        t = threading.Timer(seconds, self.on_loop, (fn, *args))
        t.daemon = True
        self.timers.append(t)
        t.start()

    def on_loop(self, fn, *args, **kwargs):
        with self.loop:
            return fn(*args, **kwargs)

    def broadcast(self, command, arguments=None, destination=None, **kw):
        assert destination == [self.hostname]
        self.sent.append((command, arguments))
        fn = {PAUSE: self.controller.pause, RESUME: self.controller.resume}[command]
        self.on_loop(fn, self, **arguments)

    def stop(self):
        self.controller.breaker_holds.clear()
        for t in self.timers:
            t.cancel()


class Dependency:
    def __init__(self):
        self.up = False
        self.probes = 0

    def probe(self, dependency, timeout):
        self.probes += 1
        return self.up


@pytest.fixture
def worker(fresh_board):
    c = Controller(("ml_results",))
    c.probe_interval = c.probe_timeout = 0.02
    dep = Dependency()
    c.probe = dep.probe
    w = FakeWorker(c)
    yield c, w, dep
    w.stop()


LEASE = 0.3


def trip(c, w):
    return w.on_loop(c.pause, w, LEASE, "5 consecutive transient errors", "redis", source=BREAKER)


def held_throughout(seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if board.paused_for() is None:
            return False
        time.sleep(0.002)
    return True


def test_the_probe_extends_the_same_lease_while_the_dependency_is_down(worker):
    c, w, dep = worker
    trip(c, w)
    first = c.leases.held("redis", BREAKER, time.time())
    assert held_throughout(8 * LEASE) and w.consuming == set()
    lease = c.leases.held("redis", BREAKER, time.time())
    assert lease.paused_at == first.paused_at and lease.renewals >= 8  # extended, never lapsed
    assert dep.probes >= 10
    dep.up = True
    wait_until(lambda: board.paused_for() is None and w.consuming == {"ml_results"}, 2, "the breaker to resume")
    assert (RESUME, {"dependency": "redis", "source": BREAKER}) in w.sent
    assert c.breaker_holds == {} and "redis" not in fresh_failures()


def test_a_lease_shorter_than_the_probe_interval_never_lapses(worker):
    c, w, dep = worker
    c.probe_interval, c.probe_timeout = 0.35, 0.05
    trip(c, w)
    first = c.leases.held("redis", BREAKER, time.time())
    assert held_throughout(5 * LEASE)
    lease = c.leases.held("redis", BREAKER, time.time())
    assert lease.paused_at == first.paused_at and lease.reason == "5 consecutive transient errors"


def fresh_failures():
    return board.current().read().get("failures", {})


def test_when_no_extension_arrives_the_lease_timer_keeps_the_hold(worker, monkeypatch):
    c, w, dep = worker
    monkeypatch.setattr(breaker, "renewal", lambda remaining, lease, cadence: None)
    trip(c, w)
    time.sleep(4 * LEASE)
    assert c.leases.held("redis", BREAKER, time.time()) is not None and w.consuming == set()
    dep.up = True
    wait_until(lambda: w.consuming == {"ml_results"}, 2, "the breaker to resume")


def test_an_operator_resume_does_not_end_a_breaker_hold_whose_probe_fails(worker):
    c, w, dep = worker
    w.on_loop(c.pause, w, 30, "redis pod restarting", "redis")
    trip(c, w)
    reply = w.on_loop(c.resume, w)
    assert reply["paused"] and reply["ended"] == ["redis"] and reply["held_by_breaker"] == ["redis"]
    assert held_throughout(3 * LEASE) and w.consuming == set()
    dep.up = True
    wait_until(lambda: w.consuming == {"ml_results"}, 2, "the breaker to resume")
    assert board.paused_for() is None


def test_the_breaker_ending_leaves_an_operator_pause_in_force(worker):
    c, w, dep = worker
    w.on_loop(c.pause, w, 30, "redis pod restarting", "redis")
    trip(c, w)
    dep.up = True
    wait_until(lambda: not c.breaker_holds, 2, "the breaker to resume")
    assert board.paused_for()["reason"] == "redis pod restarting" and w.consuming == set()


def test_on_call_can_override_a_breaker(worker):
    c, w, dep = worker
    trip(c, w)
    reply = w.on_loop(c.resume, w, dependency="redis", source=BREAKER)
    assert reply == {"ok": True, "paused": False, "ended": ["redis"], "held_by_breaker": []}
    assert w.consuming == {"ml_results"}
    wait_until(lambda: not c.probing, 2, "the probe thread to stop")


def test_status_names_the_source(worker):
    c, w, dep = worker
    trip(c, w)
    [lease] = w.on_loop(c.status, w)["leases"]
    assert lease["source"] == BREAKER and lease["dependency"] == "redis"


def test_a_child_stuck_on_the_board_does_not_block_the_main_process(worker, fresh_board):
    """The main process's event loop enforces the children's time limits: it must not
    wait on a child that holds the board, only retry until that child is killed."""
    c, w, dep = worker
    r, wr = os.pipe()

    def hold():
        fresh_board.update(lambda d: (os.write(wr, b"x"), time.sleep(3600)))

    child = multiprocessing.get_context("fork").Process(target=hold)
    child.start()
    try:
        assert os.read(r, 1) == b"x"
        started = time.monotonic()
        reply = w.on_loop(c.pause, w, 30, "redis pod restarting", "redis")
        assert reply["paused"] and time.monotonic() - started < 1.0
        assert board.paused_for() is None  # not published yet: the child holds the board
    finally:
        child.kill()
        child.join(5)
    wait_until(lambda: board.paused_for() is not None, 2, "the retried publish")
