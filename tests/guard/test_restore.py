"""A restarted operator takes up the blip its predecessor wrote to status. No I/O, no clock."""

import json

from blipguard.operator.blip import initial_state, step
from blipguard.operator.model import (
    CheckConsuming,
    ContainerStatus,
    GuardSettings,
    HeldResultsDrained,
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
from blipguard.operator.status import Observations, build, restore

SETTINGS = GuardSettings()  # settle 5, lease 30 (renew after 15), max pause 600, drain 30


def pod(now, ready=True, restarts=0):
    return PodObserved(now, "redis", "redis-master-0", "u1", ready, (ContainerStatus("redis", restarts, None),))


def fold(state, events, settings=SETTINGS):
    actions = []
    for event in events:
        state, out = step(state, event, settings)
        actions += out
    return state, actions


def written(state, now):
    """The status as it reaches the API server and comes back (JSON)."""
    return json.loads(json.dumps(build(state, Observations(), now, 1)))


def paused_status():
    """A predecessor that paused for a Redis restart at t=1000 and died in the settle wait."""
    state, _ = fold(initial_state(SETTINGS), [pod(999), pod(1000, ready=False), pod(1010), Tick(1012)])
    assert state.phase is Phase.PAUSED and state.blip.healthy_since == 1010
    return state, written(state, 1012)


def test_a_pause_cut_short_by_a_restart_is_renewed_at_once_and_resumed_after_a_fresh_settle():
    before, status = paused_status()
    state, reports = restore(status, SETTINGS, 1030)
    assert state.phase is Phase.PAUSED and state.blip.id == before.blip.id == "redis-1000000"
    assert [r.reason for r in reports] == [ReportReason.RESTORED]
    assert "renewing the pause" in reports[0].message
    state, actions = fold(state, [pod(1030)])
    assert actions == [Renew("redis-1000000", "redis", before.blip.reason, 30)]
    state, actions = fold(state, [Tick(1034)])
    assert actions == [] and state.phase is Phase.PAUSED
    state, actions = fold(state, [Tick(1035)])
    assert actions[0] == ResumeCelery("redis-1000000")
    assert actions[1].reason is ReportReason.RECOVERED and actions[1].message.startswith("recovered after 35 s")
    state, actions = fold(state, [HeldResultsDrained(1036)])
    assert actions[:2] == [ResumeNats("redis-1000000"), CheckConsuming("redis-1000000")]
    assert state.phase is Phase.WATCHING
    assert state.counters.blips_seen == 1 and state.counters.pauses == 1 and state.counters.renewals == 1


def test_pods_still_in_trouble_keep_the_restored_blip_rather_than_start_a_new_one():
    _, status = paused_status()
    state, _ = restore(status, SETTINGS, 1030)
    state, actions = fold(state, [pod(1030, ready=False, restarts=1), Tick(1040)])
    assert not any(isinstance(a, Pause) for a in actions)
    assert state.blip.id == "redis-1000000" and state.counters.blips_seen == 1


def test_the_max_pause_counts_from_the_blips_first_trouble_not_the_restart():
    _, status = paused_status()
    state, _ = restore(status, SETTINGS, 1030)
    state, actions = fold(state, [pod(1030, ready=False), Tick(1600)])
    assert state.phase is Phase.DEGRADED
    assert ResumeCelery("redis-1000000") in actions


def test_a_drain_cut_short_keeps_nats_held_until_the_results_drain_or_the_wait_ends():
    state, _ = fold(initial_state(SETTINGS), [pod(999), pod(1000, ready=False), pod(1010), Tick(1015)])
    assert state.drain is not None and state.blip is None
    restored, reports = restore(written(state, 1016), SETTINGS, 1040)
    assert restored.phase is Phase.PAUSED and restored.drain.blip_id == "redis-1000000"
    assert reports[0].reason is ReportReason.RESTORED
    later, actions = fold(restored, [pod(1040), Tick(1069)])
    assert not any(isinstance(a, ResumeNats) for a in actions)
    later, actions = fold(later, [Tick(1070)])
    assert actions[0] == ResumeNats("redis-1000000")


def test_a_mode_changed_while_the_operator_was_down_resumes_at_once():
    _, status = paused_status()
    observe = GuardSettings(mode=Mode.OBSERVE_ONLY)
    state, _ = restore(status, observe, 1030)
    state, actions = fold(state, [Tick(1030)], observe)
    assert ResumeCelery("redis-1000000") in actions and ResumeNats("redis-1000000") in actions
    assert state.phase is Phase.WATCHING


def test_a_degraded_blip_is_not_paused_again():
    state, _ = fold(initial_state(SETTINGS), [pod(999), pod(1000, ready=False), Tick(1600)])
    assert state.phase is Phase.DEGRADED
    restored, _ = restore(written(state, 1601), SETTINGS, 1700)
    restored, actions = fold(restored, [pod(1700, ready=False), Tick(1800)])
    assert restored.phase is Phase.DEGRADED
    assert not any(isinstance(a, (Pause, Renew, ResumeCelery)) for a in actions)


def test_nothing_or_nonsense_in_status_starts_clean():
    observe = GuardSettings(mode=Mode.OBSERVE_ONLY)
    for status in (None, {}, {"phase": "suspended"}, {"phase": "paused", "blip": {"id": "x", "dependency": "kafka"}},
                   {"phase": "paused", "blip": {"id": "x", "dependency": "redis", "since": "yesterday"}},
                   {"counters": {"blips": "many", "pauses": -1}}):
        for settings in (SETTINGS, observe):
            state, reports = restore(status, settings, 1000)
            assert state == initial_state(settings) and reports == []


def test_counters_survive_the_restart():
    state, _ = fold(initial_state(SETTINGS), [pod(999), pod(1000, ready=False), pod(1010), Tick(1015),
                                              HeldResultsDrained(1016)])
    restored, reports = restore(written(state, 1017), SETTINGS, 1100)
    assert reports == [] and restored.blip is None and restored.drain is None
    assert restored.counters == state.counters
