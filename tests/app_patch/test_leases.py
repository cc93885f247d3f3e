import pytest

from blipguard.app_patch.pause.leases import (
    BREAKER, MAX_LEASE, OPERATOR, PEER, InvalidPause, Leases, check_source, validate,
)


def test_a_lease_ends_by_itself():
    leases = Leases()
    leases.pause("redis", "restart", 10, now=100)
    assert leases.paused(105) and not leases.paused(110.01)
    assert [lease.dependency for lease in leases.expire(111)] == ["redis"]
    assert not leases.paused(111)


def test_renewal_extends_but_never_shortens():
    leases = Leases()
    leases.pause("redis", "restart", 30, now=0)
    lease, renewed = leases.pause("redis", "still down", 5, now=10)
    assert renewed and lease.expires_at == 30 and lease.renewals == 1 and lease.reason == "still down"
    lease, _ = leases.pause("redis", "", 60, now=20)
    assert lease.expires_at == 80 and lease.paused_at == 0


def test_a_lapsed_lease_starts_afresh():
    leases = Leases()
    leases.pause("redis", "a", 5, now=0)
    lease, renewed = leases.pause("redis", "b", 5, now=50)
    assert not renewed and lease.paused_at == 50


def test_resume_ends_one_dependency_or_all():
    leases = Leases()
    leases.pause("redis", "", 30, now=0)
    leases.pause("nats", "", 30, now=0)
    assert [lease.dependency for lease in leases.resume("nats")] == ["nats"]
    assert leases.paused(1)
    assert len(leases.resume()) == 1 and not leases.paused(1)


def test_until_is_the_last_active_lease():
    leases = Leases()
    leases.pause("redis", "", 30, now=0)
    leases.pause("nats", "", 50, now=0)
    assert leases.until(10) == 50 and leases.until(60) == 0


@pytest.mark.parametrize(
    "lease, reason, dependency, message",
    [
        (-1, "x", "redis", "lease must be > 0"),
        (0, "x", "redis", "lease must be > 0"),
        (float("nan"), "x", "redis", "lease must be > 0"),
        (MAX_LEASE + 1, "x", "redis", "at most"),
        ("10", "x", "redis", "lease must be a number"),
        (True, "x", "redis", "lease must be a number"),
        (10, 5, "redis", "reason must be a string"),
        (10, "x", "", "dependency must be a non-empty name"),
        (10, "x", None, "dependency must be a non-empty name"),
        (10, "x", "r" * 65, "dependency must be a non-empty name"),
    ],
)
def test_bad_requests_name_the_problem(lease, reason, dependency, message):
    with pytest.raises(InvalidPause, match=message):
        validate(lease, reason, dependency)


def test_validate_trims_and_caps():
    seconds, reason, dep = validate(5, "x" * 500, " redis ")
    assert (seconds, len(reason), dep) == (5.0, 200, "redis")


def test_each_source_holds_its_own_lease():
    leases = Leases()
    leases.pause("redis", "pod restarting", 30, now=0)
    lease, renewed = leases.pause("redis", "5 errors", 15, now=1, source=BREAKER)
    assert not renewed and lease.source == BREAKER and lease.expires_at == 16
    assert leases.held("redis", OPERATOR, 2).expires_at == 30 and leases.held("redis", BREAKER, 20) is None
    assert {d["source"] for d in (lease.as_dict(2) for lease in leases.active(2))} == {OPERATOR, BREAKER}


def test_an_operator_resume_leaves_the_breaker_lease():
    leases = Leases()
    leases.pause("redis", "", 30, now=0)
    leases.pause("redis", "", 30, now=0, source=PEER)
    leases.pause("redis", "", 15, now=0, source=BREAKER)
    ended = leases.resume("redis")
    assert sorted(lease.source for lease in ended) == [OPERATOR, PEER]
    assert [lease.source for lease in leases.active(1)] == [BREAKER]
    assert leases.resume() == [] and leases.paused(1)
    assert [lease.source for lease in leases.resume(source=BREAKER)] == [BREAKER] and not leases.paused(1)


def test_the_board_view_has_the_longest_lease_per_dependency_and_the_breakers():
    leases = Leases()
    leases.pause("redis", "operator", 30, now=0)
    leases.pause("redis", "breaker", 15, now=0, source=BREAKER)
    leases.pause("nats", "gone", 5, now=0)
    assert leases.board_view(1) == {
        "leases": {"redis": {"until": 30, "reason": "operator"}, "nats": {"until": 5, "reason": "gone"}},
        "breaker": {"redis": 15},
    }
    assert leases.board_view(20) == {"leases": {"redis": {"until": 30, "reason": "operator"}}, "breaker": {}}


def test_unknown_sources_are_refused():
    assert check_source(BREAKER) == BREAKER
    with pytest.raises(InvalidPause, match="source must be one of"):
        check_source("kubernetes")
