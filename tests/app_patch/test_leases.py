import pytest

from blipguard.app_patch.pause.leases import MAX_LEASE, InvalidPause, Leases, record_failure, validate


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


def test_breaker_trips_once_at_the_threshold():
    failures, trips = {}, []
    for _ in range(4):
        failures, tripped = record_failure(failures, "redis", 3)
        trips.append(tripped)
    assert trips == [False, False, True, False]
    _, tripped = record_failure(failures, "nats", 3)
    assert not tripped
    with pytest.raises(Exception, match="BREAKER_THRESHOLD"):
        record_failure({}, "redis", 0)
