"""The operator's blip state machine: exact actions for exact timelines. No I/O, no clock."""

import pytest

from blipguard.operator.blip import GuardState, initial_state, step
from blipguard.operator.model import (
    CheckConsuming,
    ContainerStatus,
    Dependency,
    ForceResume,
    GuardSettings,
    HeldResultsDrained,
    HeldResultsDraining,
    HoldNats,
    Mode,
    Pause,
    Phase,
    PodObserved,
    Renew,
    Report,
    ReportReason,
    ResumeCelery,
    ResumeNats,
    Tick,
)

REDIS, NATS = Dependency.REDIS, Dependency.NATS
DEFAULTS = GuardSettings()  # settle 5, lease 30 (renew after 15), max pause 600, drain 30
R = ReportReason


def pod(now, name="redis-master-0", uid="u1", ready=True, restarts=0, waiting=None, dep="redis", deleted=False):
    return PodObserved(now, dep, name, uid, ready, (ContainerStatus(dep, restarts, waiting),), deleted)


def nats(now, **kw):
    return pod(now, name="nats-0", uid="n1", dep="nats", **kw)


def run(events, settings=DEFAULTS, state=None):
    """Fold ``step`` over the events: the final state and every action, in order."""
    state = initial_state(settings) if state is None else state
    actions = []
    for event in events:
        state, out = step(state, event, settings)
        actions += out
    return state, actions


def ticks(start, stop):
    return [Tick(t) for t in range(start, stop + 1)]


def started(blip_id, reason, dep=REDIS, lease=30):
    return [
        Pause(blip_id, dep, reason, lease),
        Report(blip_id, R.BLIP_STARTED, f"blip started: {reason}; pausing result consumers (lease {lease} s)"),
    ]


def recovered(blip_id, seconds, renewals=0):
    s = "" if renewals == 1 else "s"
    return [
        ResumeCelery(blip_id),
        Report(blip_id, R.RECOVERED, f"recovered after {seconds} s ({renewals} renewal{s}): "
               "Celery resumed, NATS resumes once the held results drain"),
    ]


def nats_resumed(blip_id, why="held results drained"):
    return [ResumeNats(blip_id), CheckConsuming(blip_id), Report(blip_id, R.NATS_RESUMED, f"NATS resumed: {why}")]


NOT_READY = "redis pod redis-master-0 not ready"


# --- detection -----------------------------------------------------------------------


def test_pods_seen_at_start_are_a_baseline_not_a_blip():
    state, actions = run([pod(0, restarts=7), nats(0, restarts=2), *ticks(1, 100)])
    assert actions == []
    assert state.phase is Phase.WATCHING
    assert state.blip is None and state.counters.blips_seen == 0


def test_pod_already_not_ready_at_start_is_a_blip():
    state, actions = run([pod(0, ready=False)])
    assert actions == started("redis-0", NOT_READY)
    assert state.phase is Phase.PAUSED


def test_readiness_lost_pauses():
    state, actions = run([pod(0), pod(10, ready=False)])
    assert actions == started("redis-10000", NOT_READY)
    assert state.phase is Phase.PAUSED


def test_restart_without_readiness_flip_pauses_then_resumes_after_settle():
    reason = "redis pod redis-master-0 restarted (restartCount 2 -> 3)"
    state, actions = run([pod(0, restarts=2), pod(10, restarts=3)])
    assert actions == started("redis-10000", reason)

    state, actions = run(ticks(11, 14), state=state)
    assert actions == [] and state.phase is Phase.PAUSED
    state, actions = run([Tick(15)], state=state)
    assert actions == recovered("redis-10000", 5)
    assert state.phase is Phase.PAUSED  # NATS is held until the results drain
    state, actions = run([HeldResultsDrained(16)], state=state)
    assert actions == nats_resumed("redis-10000")
    assert state.phase is Phase.WATCHING


def test_replaced_pod_pauses():
    state, actions = run([pod(0), pod(10, uid="u2")])
    assert actions == started("redis-10000", "redis pod redis-master-0 replaced (new UID)")
    # its restartCount starts afresh: 0 after 5 on the old pod is no restart
    state, actions = run([pod(0, restarts=5), pod(10, uid="u2", restarts=0, ready=False)])
    assert actions == started("redis-10000", "redis pod redis-master-0 replaced (new UID), not ready")


def test_crashloop_is_trouble_and_blocks_recovery_even_while_ready():
    reason = "redis pod redis-master-0 restarted (restartCount 0 -> 1), in CrashLoopBackOff, not ready"
    state, actions = run([pod(0), pod(10, ready=False, restarts=1, waiting="CrashLoopBackOff")])
    assert actions == started("redis-10000", reason)
    # Ready between two crashes, still in CrashLoopBackOff: no settle, no resume
    between_crashes = pod(12, ready=True, restarts=1, waiting="CrashLoopBackOff")
    state, actions = run([between_crashes, *ticks(13, 30)], state=state)
    assert actions == [Renew("redis-10000", REDIS, reason, 30)]  # at 25
    state, actions = run([pod(30, restarts=1), *ticks(31, 35)], state=state)
    assert actions == recovered("redis-10000", 25, renewals=1)


def test_deleted_pod_blocks_recovery_until_its_replacement_is_ready():
    state, actions = run([pod(0), pod(10, deleted=True), *ticks(11, 20)])
    assert actions[:2] == started("redis-10000", "redis pod redis-master-0 deleted")
    assert state.phase is Phase.PAUSED  # no pod left is not "every pod ready"
    state, actions = run([pod(21, uid="u2", ready=False), pod(22, uid="u2"), *ticks(23, 27)], state=state)
    assert actions == [Renew("redis-10000", REDIS, "redis pod redis-master-0 deleted", 30)] + recovered(
        "redis-10000", 17, renewals=1)


def test_a_new_pod_name_stands_in_for_a_deleted_one():
    events = [pod(0, name="redis-a"), pod(10, name="redis-a", deleted=True),
              pod(10.5, name="redis-a", deleted=True),  # repeated delete: nothing new
              pod(11, name="redis-a", ready=False, deleted=False),  # late update of the deleted pod
              pod(12, name="redis-b", uid="u2"), *ticks(13, 17)]
    state, actions = run(events)
    assert actions == started("redis-10000", "redis pod redis-a deleted") + recovered("redis-10000", 7)
    assert [p.name for p in state.pods] == ["redis-b"]


def test_restart_of_one_container_of_several_names_it():
    two = (ContainerStatus("redis", 0), ContainerStatus("sentinel", 4))
    grown = (ContainerStatus("redis", 0), ContainerStatus("sentinel", 5))
    _, actions = run([PodObserved(0, "redis", "r-0", "u", True, two),
                      PodObserved(1, "redis", "r-0", "u", True, grown)])
    assert actions == started("redis-1000", "redis pod r-0 restarted (container sentinel: restartCount 4 -> 5)")


def test_trouble_during_settle_restarts_the_settle_wait():
    events = [pod(0), pod(10, ready=False), pod(12), Tick(16),
              pod(16, restarts=1)]  # ready all along, but a restart: settle again from 16
    state, actions = run(events)
    interrupted = Report("redis-10000", R.SETTLE_INTERRUPTED, "trouble while settling, blip continues: "
                         "redis pod redis-master-0 restarted (restartCount 0 -> 1)")
    assert actions == started("redis-10000", NOT_READY) + [interrupted]
    state, actions = run([Tick(17), Tick(20)], state=state)
    assert actions == []
    state, actions = run([Tick(21)], state=state)
    assert actions == recovered("redis-10000", 11)


def test_trouble_seen_when_settle_would_end_keeps_the_blip():
    state, actions = run([pod(0), pod(10, ready=False), pod(12), pod(17, ready=False)])
    assert actions[2:] == [Report("redis-10000", R.SETTLE_INTERRUPTED,
                                  f"trouble while settling, blip continues: {NOT_READY}")]
    assert state.phase is Phase.PAUSED


# --- renewals and the resume order ------------------------------------------------------


def test_renewals_before_the_lease_runs_out_and_never_after_resume():
    state, _ = run([pod(0), pod(10, ready=False)])
    timeline = []
    for event in [*ticks(11, 60), pod(60), *ticks(61, 120)]:
        state, out = step(state, event, DEFAULTS)
        timeline += [(event.now, a) for a in out if not isinstance(a, Report)]
    renew = Renew("redis-10000", REDIS, NOT_READY, 30)
    assert timeline == [(25, renew), (40, renew), (55, renew), (65, ResumeCelery("redis-10000")),
                        (80, HoldNats("redis-10000")),  # NATS held through the drain wait
                        (95, ResumeNats("redis-10000")), (95, CheckConsuming("redis-10000"))]
    assert state.counters.renewals == 3


def test_renewal_follows_the_lease_and_fraction_settings():
    settings = GuardSettings(lease_seconds=10, renew_fraction=0.8)
    state, actions = run([pod(0), pod(1, ready=False), *ticks(2, 20)], settings)
    renews = [a for a in actions if isinstance(a, Renew)]
    assert renews == [Renew("redis-1000", REDIS, NOT_READY, 10)] * 2  # at 9 and 17


def test_nats_resumes_only_after_the_held_results_drain():
    state, actions = run([pod(0), pod(10, ready=False), HeldResultsDrained(11),  # too early: ignored
                          pod(12), *ticks(13, 17)])
    assert actions == started("redis-10000", NOT_READY) + recovered("redis-10000", 7)
    state, actions = run(ticks(18, 40), state=state)
    assert actions == [HoldNats("redis-10000")]  # drain timeout 30 s: not yet; NATS held at 32
    state, actions = run([HeldResultsDrained(41), HeldResultsDrained(42), *ticks(43, 100)], state=state)
    assert actions == nats_resumed("redis-10000")


def test_nats_resumes_after_the_drain_timeout_without_the_drained_event():
    state, actions = run([pod(0), pod(10, ready=False), pod(12), *ticks(13, 46)])
    assert actions == started("redis-10000", NOT_READY) + recovered("redis-10000", 7) + [HoldNats("redis-10000")]
    state, actions = run([Tick(47), HeldResultsDrained(48)], state=state)
    assert actions == nats_resumed("redis-10000", "drain wait timed out after 30 s")


def test_the_drain_wait_lasts_while_the_held_results_go_down_and_ends_when_they_stop():
    """A long pause leaves hundreds of results queued: draining them outlasts the drain
    timeout, and resuming NATS before they are acked redelivers every one whose ack_wait ran
    out. The timeout counts from the last progress, NATS is held meanwhile, and the max
    pause bounds the whole wait."""
    state, _ = run([pod(0), pod(10, ready=False), pod(12), *ticks(13, 17)])  # Celery resumed at 17
    events = [HeldResultsDraining(17 + 10 * k, 580 - 40 * k) for k in range(14)]  # 580 -> 60 by 147
    events = sorted([*events, *ticks(18, 160)], key=lambda e: e.now)
    state, actions = run(events, state=state)
    assert not any(isinstance(a, ResumeNats) for a in actions)  # 147 + 30 > 160
    holds = [a for a in actions if isinstance(a, HoldNats)]
    assert len(holds) == 9  # every 15 s since 17
    state, actions = run([HeldResultsDraining(161, 60), *ticks(162, 176)], state=state)  # no progress
    assert not any(isinstance(a, ResumeNats) for a in actions)
    state, actions = run([Tick(177)], state=state)
    assert actions[0] == ResumeNats("redis-10000")
    assert actions[2].message == ("NATS resumed: held results stopped draining "
                                  "(60 still pending after 30 s without progress)")
    state, _ = run([pod(200), pod(210, ready=False), pod(212), *ticks(213, 217)], state=state)
    steady = [HeldResultsDraining(t, 1000 - t) for t in range(218, 900)]  # progress all along
    state, actions = run(steady, state=state)
    resumed = [a for a in actions if isinstance(a, Report) and a.reason is R.NATS_RESUMED]
    assert [r.message for r in resumed] == ["NATS resumed: drain longer than the max pause (600 s, 183 still pending)"]
    state, actions = run([HeldResultsDraining(900, 0), HeldResultsDrained(901)], state=state)
    assert actions == []


def test_a_new_blip_during_the_drain_cancels_the_pending_nats_resume():
    state, actions = run([pod(0), pod(10, ready=False), pod(12), Tick(17), pod(20, ready=False)])
    reason = NOT_READY
    assert actions[4:] == [
        Pause("redis-20000", REDIS, reason, 30),
        Report("redis-20000", R.BLIP_STARTED, f"blip started: {reason}; pausing result consumers (lease 30 s); "
               "NATS stays paused (its resume for redis-10000 is cancelled)"),
    ]
    state, actions = run([HeldResultsDrained(21), *ticks(22, 24)], state=state)
    assert actions == []
    state, actions = run([pod(25), *ticks(26, 30), HeldResultsDrained(31)], state=state)
    assert actions == recovered("redis-20000", 10) + nats_resumed("redis-20000")


# --- max pause ---------------------------------------------------------------------------


def test_max_pause_resumes_degrades_does_not_pause_again_and_recovers():
    settings = GuardSettings(max_pause_seconds=60)
    state, actions = run([pod(0), pod(10, ready=False), *ticks(11, 69)], settings)
    assert state.phase is Phase.PAUSED
    state, actions = run([Tick(70)], settings, state)
    assert actions == [
        ResumeCelery("redis-10000"),
        Report("redis-10000", R.DEGRADED, "degraded: blip longer than the max pause (60 s); resuming anyway, "
               f"no new pause until the pods recover; first trouble: {NOT_READY}"),
    ]
    assert state.phase is Phase.DEGRADED
    # the same blip goes on: restarts, more not-ready, the drain timeout; never a pause or renewal
    state, actions = run([pod(80, ready=False, restarts=1), *ticks(81, 150), pod(160, ready=False, uid="u2")],
                         settings, state)
    assert actions == [HoldNats("redis-10000")] + nats_resumed("redis-10000", "drain wait timed out after 30 s")
    assert state.phase is Phase.DEGRADED
    state, actions = run([pod(200, uid="u2"), *ticks(201, 205)], settings, state)
    assert actions == [Report("redis-10000", R.RECOVERED, "recovered after 195 s (was degraded)")]
    assert state.phase is Phase.WATCHING
    state, actions = run([pod(300, uid="u2", ready=False)], settings, state)
    assert actions == started("redis-300000", NOT_READY)
    assert state.counters.degraded == 1 and state.counters.pauses == 2


# --- modes -------------------------------------------------------------------------------


def test_observe_only_reports_but_never_pauses_or_resumes():
    settings = GuardSettings(mode="observe-only", max_pause_seconds=60)
    state, actions = run([pod(0), pod(10, ready=False), *ticks(11, 100)], settings)
    assert actions == [
        Report("redis-10000", R.BLIP_STARTED, f"blip observed: {NOT_READY} (observe-only: not pausing)"),
        Report("redis-10000", R.DEGRADED, "degraded: blip longer than the max pause (60 s) "
               f"(observe-only: nothing to resume); first trouble: {NOT_READY}"),
    ]
    assert state.phase is Phase.DEGRADED
    state, actions = run([pod(101), *ticks(102, 200), HeldResultsDrained(201), pod(300, restarts=1),
                          *ticks(301, 400)], settings, state)
    reason = "redis pod redis-master-0 restarted (restartCount 0 -> 1)"
    assert actions == [
        Report("redis-10000", R.RECOVERED, "recovered after 96 s (was degraded)"),
        Report("redis-300000", R.BLIP_STARTED, f"blip observed: {reason} (observe-only: not pausing)"),
        Report("redis-300000", R.RECOVERED, "recovered after 5 s (observe-only)"),
    ]
    assert state.phase is Phase.WATCHING
    assert (state.counters.blips_seen, state.counters.pauses, state.counters.renewals) == (2, 0, 0)


def test_observe_only_phase_is_watching_during_a_blip():
    state, _ = run([pod(0), pod(10, ready=False)], GuardSettings(mode=Mode.OBSERVE_ONLY))
    assert state.phase is Phase.WATCHING and state.blip.id == "redis-10000"


def test_suspended_ignores_everything():
    settings = GuardSettings(mode="suspended")
    state, actions = run([pod(0), pod(10, ready=False), pod(11, uid="u2", deleted=True), *ticks(12, 900),
                          HeldResultsDrained(901), ForceResume(902)], settings)
    assert actions == []
    assert state.phase is Phase.SUSPENDED and state.pods == () and state.counters.blips_seen == 0


def test_active_to_observe_only_mid_blip_resumes_at_once():
    state, _ = run([pod(0), pod(10, ready=False)])
    observe = GuardSettings(mode="observe-only")
    state, actions = run([Tick(12)], observe, state)
    assert actions == [ResumeCelery("redis-10000"), ResumeNats("redis-10000"), CheckConsuming("redis-10000"),
                       Report("redis-10000", R.MODE_CHANGED, "mode active -> observe-only; resumed at once")]
    assert state.phase is Phase.WATCHING
    state, actions = run([*ticks(13, 40), pod(41), *ticks(42, 46)], observe, state)
    assert actions == [Report("redis-10000", R.RECOVERED, "recovered after 36 s (observe-only)")]


def test_leaving_active_while_nats_waits_for_the_drain_resumes_nats_at_once():
    state, _ = run([pod(0), pod(10, ready=False), pod(11), Tick(16)])
    assert state.phase is Phase.PAUSED and state.blip is None
    state, actions = run([Tick(17)], GuardSettings(mode="suspended"), state)
    assert actions == [ResumeNats("redis-10000"), CheckConsuming("redis-10000"),
                       Report("redis-10000", R.MODE_CHANGED, "mode active -> suspended; resumed at once")]
    assert state.phase is Phase.SUSPENDED


def test_suspended_mid_blip_resumes_and_leaving_it_takes_a_fresh_baseline():
    state, _ = run([pod(0, restarts=1), pod(10, ready=False)])
    state, actions = run([Tick(11), pod(12, restarts=4)], GuardSettings(mode="suspended"), state)
    assert [type(a) for a in actions] == [ResumeCelery, ResumeNats, CheckConsuming, Report]
    state, actions = run([pod(20, restarts=4), *ticks(21, 100)], DEFAULTS, state)
    assert actions == [Report(None, R.MODE_CHANGED, "mode suspended -> active")]
    assert state.phase is Phase.WATCHING


def test_observe_only_to_active_mid_blip_pauses_for_it():
    state, _ = run([pod(0), pod(10, ready=False)], GuardSettings(mode="observe-only"))
    state, actions = run([Tick(20), *ticks(21, 35)], DEFAULTS, state)
    assert actions == [
        Pause("redis-10000", REDIS, NOT_READY, 30),
        Report("redis-10000", R.MODE_CHANGED,
               f"mode observe-only -> active; pausing for the ongoing blip: {NOT_READY}"),
        Renew("redis-10000", REDIS, NOT_READY, 30),  # 15 s after that pause
    ]
    assert state.phase is Phase.PAUSED and state.counters.pauses == 1


# --- force resume ------------------------------------------------------------------------


def test_force_resume_resumes_at_once_and_ends_pausing_for_that_blip():
    state, actions = run([pod(0), pod(10, ready=False), ForceResume(12, by="alice")])
    assert actions[2:] == [ResumeCelery("redis-10000"), ResumeNats("redis-10000"), CheckConsuming("redis-10000"),
                           Report("redis-10000", R.FORCE_RESUMED, "force resume by alice: resumed at once")]
    assert state.phase is Phase.WATCHING
    assert state.counters.forced_resumes == 1
    # trouble goes on: no pause, no renewal, no degraded
    state, actions = run([pod(20, restarts=1, ready=False), *ticks(21, 700)], state=state)
    assert actions == []
    state, actions = run([pod(701, restarts=1), *ticks(702, 706)], state=state)
    assert actions == [Report("redis-10000", R.RECOVERED, "recovered after 696 s (resumed earlier by force)")]
    # afresh: a new blip pauses again
    state, actions = run([pod(800, restarts=2)], state=state)
    assert actions == started("redis-800000", "redis pod redis-master-0 restarted (restartCount 1 -> 2)")


def test_force_resume_with_nothing_paused_only_reports():
    state, actions = run([pod(0), ForceResume(5)])
    assert actions == [Report(None, R.FORCE_RESUMED, "force resume by on-call: nothing paused")]
    assert state.counters.forced_resumes == 0


def test_force_resume_during_the_drain_resumes_nats_now():
    state, actions = run([pod(0), pod(10, ready=False), pod(11), Tick(16), ForceResume(17)])
    assert actions[4:] == [ResumeNats("redis-10000"), CheckConsuming("redis-10000"),
                           Report("redis-10000", R.FORCE_RESUMED, "force resume by on-call: resumed at once")]
    assert state.phase is Phase.WATCHING


# --- several dependencies, ids and counters ---------------------------------------------


def test_two_dependencies_make_one_blip_that_ends_when_all_are_ready():
    state, actions = run([pod(0), nats(0), nats(10, ready=False), pod(11, ready=False), nats(12), *ticks(13, 20)])
    assert actions == started("nats-10000", "nats pod nats-0 not ready", dep=NATS)  # redis' trouble: same blip
    state, actions = run([pod(21), *ticks(22, 26)], state=state)
    assert actions == [Renew("nats-10000", NATS, "nats pod nats-0 not ready", 30)] + recovered(
        "nats-10000", 16, renewals=1)


def test_one_id_on_every_action_of_a_blip_and_a_new_one_for_the_next():
    events = [pod(0), pod(10, ready=False), *ticks(11, 40), pod(41), *ticks(42, 46), HeldResultsDrained(47),
              pod(50.25, restarts=1), *ticks(51, 60), ForceResume(61)]
    _, actions = run(events)
    assert [type(a) for a in actions] == [
        Pause, Report, Renew, Renew, ResumeCelery, Report, ResumeNats, CheckConsuming, Report,  # the first blip
        Pause, Report, ResumeCelery, Report, ResumeNats, CheckConsuming, Report,  # the second, force-resumed
    ]
    assert [a.blip_id for a in actions] == ["redis-10000"] * 9 + ["redis-50250"] * 7


def test_counters():
    settings = GuardSettings(max_pause_seconds=60)
    events = [pod(0), nats(0),
              pod(10, ready=False), *ticks(11, 40), pod(41), *ticks(42, 46),  # 36 s, 2 renewals
              nats(100, ready=False), *ticks(101, 200), nats(201), *ticks(202, 206)]  # degraded
    state, _ = run(events, settings)
    c = state.counters
    assert (c.blips_seen, c.pauses, c.renewals, c.degraded, c.last_blip_seconds) == (2, 2, 5, 1, 106)


def test_time_never_goes_back():
    state, actions = run([pod(0), pod(10, ready=False), pod(11), Tick(16), pod(3, name="redis-replica-0")])
    assert state.now == 16 and state.pods[-1].name == "redis-replica-0"
    assert actions == started("redis-10000", NOT_READY) + recovered("redis-10000", 6)


def test_unknown_event_is_refused():
    with pytest.raises(TypeError, match="not a guard event"):
        step(GuardState(), "tick", DEFAULTS)


# --- settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"settle_seconds": -1}, "settle_seconds must be >= 0"),
        ({"lease_seconds": 0}, "lease_seconds must be > 0 and at most 3600"),
        ({"lease_seconds": 3601}, "lease_seconds must be > 0 and at most 3600"),
        ({"renew_fraction": 1}, "renew_fraction must be between 0 and 1"),
        ({"renew_fraction": 0}, "renew_fraction must be between 0 and 1"),
        ({"renew_fraction": "half"}, "renew_fraction must be a number"),
        ({"max_pause_seconds": 0}, "max_pause_seconds must be > 0"),
        ({"max_pause_seconds": float("inf")}, "max_pause_seconds must be a finite number"),
        ({"drain_timeout_seconds": -0.5}, "drain_timeout_seconds must be >= 0"),
        ({"settle_seconds": True}, "settle_seconds must be a finite number"),
        ({"lease_seconds": "30"}, "lease_seconds must be a finite number"),
        ({"mode": "paused"}, r"mode must be one of \['active', 'observe-only', 'suspended'\], got 'paused'"),
    ],
)
def test_bad_settings_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GuardSettings(**kwargs)


def test_settings_accept_a_mode_name_and_bad_dependency_is_refused():
    assert GuardSettings(mode="observe-only").mode is Mode.OBSERVE_ONLY
    assert GuardSettings(settle_seconds=0, drain_timeout_seconds=0).renew_after_seconds == 15
    with pytest.raises(ValueError, match=r"dependency must be one of \['redis', 'nats'\], got 'postgres'"):
        pod(0, dep="postgres")


def test_the_operator_folder_never_shadows_the_standard_library():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    # -S: no site hooks (an editable install's finder) that would import the real one first.
    out = subprocess.run([sys.executable, "-S", "-c", "import operator, collections; print(operator.__file__)"],
                         cwd=root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert not Path(out.stdout.strip()).is_relative_to(root), out.stdout
