"""RetryPolicy and fit_to_ack_wait: survive short blips, never outlive the ack_wait."""

import random

import pytest

from blipguard.app_patch.errors import ConfigurationError
from blipguard.app_patch.retry_policy import RetryPolicy, fit_to_ack_wait

DEFAULTS = dict(max_retries=6, base=1.0, cap=30.0)


def test_default_delays_double_then_hit_the_cap():
    p = RetryPolicy(**DEFAULTS)
    assert [p.delay(k) for k in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]


def test_default_policy_survives_a_ten_second_redis_outage():
    p = RetryPolicy(**DEFAULTS)
    # Even when every jittered wait is as short as it can be, retries keep going > 10 s.
    assert p.min_window == pytest.approx(30.5)
    assert p.min_window > 10


def test_default_policy_worst_case_window():
    assert RetryPolicy(**DEFAULTS).max_window == pytest.approx(61.0)


def test_max_window_counts_every_attempt_blocking_time():
    # 6 waits plus 7 attempts (the first one and 6 retries), each up to 5 s.
    assert RetryPolicy(6, 1.0, 30.0, attempt_max=5.0).max_window == pytest.approx(61.0 + 7 * 5.0)


def test_no_retries_means_no_waiting():
    p = RetryPolicy(0, 1.0, 30.0, attempt_max=2.0)
    assert p.min_window == 0
    assert p.max_window == pytest.approx(2.0)


@pytest.mark.parametrize("retry", range(10))
def test_countdown_is_equal_jitter_within_half_and_full_delay(retry):
    p = RetryPolicy(**DEFAULTS)
    rng = random.Random(1234 + retry)
    d = p.delay(retry)
    draws = [p.countdown(retry, rng) for _ in range(2000)]
    assert all(d / 2 <= c <= d for c in draws)
    # Jitter really spreads the retries: draws cover most of [d/2, d], not one point.
    assert max(draws) - min(draws) > 0.9 * (d / 2)


def test_countdown_without_rng_uses_module_random_and_stays_in_bounds():
    p = RetryPolicy(**DEFAULTS)
    for retry in range(8):
        d = p.delay(retry)
        for _ in range(200):
            assert d / 2 <= p.countdown(retry) <= d


def test_countdown_is_reproducible_with_a_seeded_rng():
    p = RetryPolicy(**DEFAULTS)
    a = [p.countdown(k, random.Random(7)) for k in range(6)]
    b = [p.countdown(k, random.Random(7)) for k in range(6)]
    assert a == b


def test_jittered_retries_always_outlast_the_min_window():
    p = RetryPolicy(**DEFAULTS)
    rng = random.Random(99)
    for _ in range(500):
        total = sum(p.countdown(k, rng) for k in range(p.max_retries))
        assert p.min_window <= total <= p.max_window


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(max_retries=-1, base=1.0, cap=30.0), "MAX_RETRIES"),
        (dict(max_retries=6, base=0, cap=30.0), "BACKOFF_BASE"),
        (dict(max_retries=6, base=-1.0, cap=30.0), "BACKOFF_BASE"),
        (dict(max_retries=6, base=1.0, cap=0), "BACKOFF_MAX"),
    ],
)
def test_invalid_policy_is_rejected_naming_the_setting(kwargs, key):
    with pytest.raises(ConfigurationError, match=key):
        RetryPolicy(**kwargs)


def test_fit_with_generous_ack_wait_keeps_the_requested_policy():
    p = fit_to_ack_wait(300, **DEFAULTS)
    assert p == RetryPolicy(6, 1.0, 30.0)
    assert p.max_window <= 240


def test_fit_with_generous_ack_wait_and_attempt_time_keeps_the_cap():
    p = fit_to_ack_wait(300, **DEFAULTS, attempt_max=5.0)
    assert p.cap == 30.0 and p.base == 1.0
    assert p.max_window <= 0.8 * 300


def test_fit_with_short_ack_wait_lowers_the_cap_to_fit_the_budget():
    p = fit_to_ack_wait(30, **DEFAULTS)
    assert p.max_retries == 6
    assert p.cap < 30.0
    assert p.max_window <= 24.0
    # ... and not by more than needed: the budget is (almost) used up.
    assert p.max_window == pytest.approx(24.0, abs=0.01)
    assert RetryPolicy(6, 1.0, p.cap * 1.01).max_window > 24.0
    # A 10 s blip is still survived with the fitted policy.
    assert p.min_window > 10


@pytest.mark.parametrize("ack_wait", [20, 30, 45, 60, 90, 120, 300, 3600])
@pytest.mark.parametrize("attempt_max", [0.0, 0.5, 1.0])
def test_fitted_window_always_fits_inside_the_budget(ack_wait, attempt_max):
    p = fit_to_ack_wait(ack_wait, **DEFAULTS, attempt_max=attempt_max)
    assert p.max_window <= 0.8 * ack_wait + 1e-9
    assert p.max_retries == 6
    assert p.attempt_max == attempt_max
    assert p.cap <= 30.0
    assert all(p.delay(k) <= p.cap for k in range(p.max_retries))


def test_fit_respects_a_custom_budget_fraction():
    p = fit_to_ack_wait(60, **DEFAULTS, budget_fraction=0.5)
    assert p.max_window <= 30.0
    assert p.cap < 30.0


def test_fit_lowers_the_base_too_when_the_cap_drops_below_it():
    p = fit_to_ack_wait(10, max_retries=6, base=5.0, cap=30.0)
    assert p.max_window <= 8.0
    assert p.base <= p.cap
    assert all(p.delay(k) <= p.cap for k in range(6))


def test_when_no_cap_fits_retries_are_dropped_until_the_window_fits():
    # 7 attempts of up to 5 s each already need 35 s > the 24 s budget of a 30 s ack_wait
    # (the pre-fix platform's): the default 6 retries become as many as fit.
    p = fit_to_ack_wait(30, **DEFAULTS, attempt_max=5.0)
    assert 0 < p.max_retries < 6
    assert p.max_window <= 24.0
    assert fit_to_ack_wait(30, **{**DEFAULTS, "max_retries": p.max_retries + 1}, attempt_max=5.0).max_retries == p.max_retries


def test_nothing_fits_gives_no_retries_rather_than_an_error():
    p = fit_to_ack_wait(10, max_retries=6, base=1.0, cap=30.0, attempt_max=9.0)
    assert p.max_retries == 0


def test_no_retries_fit_when_one_attempt_fits():
    p = fit_to_ack_wait(10, max_retries=0, base=1.0, cap=30.0, attempt_max=5.0)
    assert p.max_window == pytest.approx(5.0)


@pytest.mark.parametrize("ack_wait", [0, -5])
def test_non_positive_ack_wait_is_rejected(ack_wait):
    with pytest.raises(ConfigurationError, match="ack_wait"):
        fit_to_ack_wait(ack_wait, **DEFAULTS)


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5])
def test_budget_fraction_out_of_range_is_rejected(fraction):
    with pytest.raises(ConfigurationError, match="RETRY_BUDGET_FRACTION"):
        fit_to_ack_wait(300, **DEFAULTS, budget_fraction=fraction)


def test_negative_max_retries_is_rejected_by_fit():
    with pytest.raises(ConfigurationError, match="MAX_RETRIES"):
        fit_to_ack_wait(300, max_retries=-1, base=1.0, cap=30.0)


@pytest.mark.parametrize("cap", [float("inf"), 1e20])
def test_fit_with_an_unbounded_cap_still_finds_a_fitting_cap(cap):
    p = fit_to_ack_wait(30, max_retries=6, base=1.0, cap=cap)
    assert p.max_window <= 24.0
    assert p.max_window == pytest.approx(fit_to_ack_wait(30, **DEFAULTS).max_window)
