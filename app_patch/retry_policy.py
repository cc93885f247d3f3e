"""Bounded exponential backoff with jitter, fitted inside the NATS ack_wait. Pure."""

import random
from dataclasses import dataclass

from .errors import ConfigurationError


@dataclass(frozen=True)
class RetryPolicy:
    """Retry k (0-based) waits between half and all of ``min(cap, base * 2**k)``.

    Equal jitter rather than full jitter: it still spreads a thundering herd, but the
    window has a floor, so a blip shorter than :attr:`min_window` never exhausts retries.
    ``attempt_max`` is the longest one attempt can block on its dependencies (socket and
    connect timeouts, client-level retries); it counts against the ack_wait too.
    """

    max_retries: int
    base: float
    cap: float
    attempt_max: float = 0.0

    def __post_init__(self):
        if self.max_retries < 0:
            raise ConfigurationError(f"MAX_RETRIES must be >= 0, got {self.max_retries}")
        if self.base <= 0 or self.cap <= 0:
            raise ConfigurationError(f"BACKOFF_BASE and BACKOFF_MAX must be > 0, got {self.base} and {self.cap}")

    def delay(self, retry: int) -> float:
        """The ceiling of the wait before retry number ``retry`` (0-based)."""
        return min(self.cap, self.base * 2**retry)

    def countdown(self, retry: int, rng: random.Random | None = None) -> float:
        d = self.delay(retry)
        return d / 2 + (rng or random).uniform(0, d / 2)

    @property
    def max_window(self) -> float:
        """Worst case from the first attempt's start to the last attempt's end."""
        waits = sum(self.delay(k) for k in range(self.max_retries))
        return waits + (self.max_retries + 1) * self.attempt_max

    @property
    def min_window(self) -> float:
        """Shortest time the retries keep trying (a blip shorter than this is survived)."""
        return sum(self.delay(k) / 2 for k in range(self.max_retries))


def fit_to_ack_wait(
    ack_wait: float,
    max_retries: int,
    base: float,
    cap: float,
    attempt_max: float = 0.0,
    budget_fraction: float = 0.8,
) -> RetryPolicy:
    """The requested policy, fitted so the whole window stays inside
    ``budget_fraction * ack_wait`` and JetStream never redelivers a task we are still
    retrying: first the cap is lowered, then, if even that cannot fit, retries are
    dropped one by one (down to none). Compare the result with the request to report it."""
    if ack_wait <= 0:
        raise ConfigurationError(f"ack_wait must be > 0 seconds, got {ack_wait}")
    if not 0 < budget_fraction <= 1:
        raise ConfigurationError(f"RETRY_BUDGET_FRACTION must be in (0, 1], got {budget_fraction}")
    RetryPolicy(max_retries, base, cap, attempt_max)  # validates the request itself
    budget = ack_wait * budget_fraction
    for retries in range(max_retries, 0, -1):
        fitted = _fit_cap(budget, retries, base, cap, attempt_max)
        if fitted is not None:
            return fitted
    return RetryPolicy(0, base, cap, attempt_max)


def _fit_cap(budget: float, retries: int, base: float, cap: float, attempt_max: float) -> RetryPolicy | None:
    policy = RetryPolicy(retries, base, cap, attempt_max)
    if policy.max_window <= budget:
        return policy
    if (retries + 1) * attempt_max >= budget:
        return None
    lo, hi = 0.0, min(cap, budget)  # any cap that fits is at most the budget
    for _ in range(60):  # bisect the largest cap that fits
        mid = (lo + hi) / 2
        if mid > 0 and RetryPolicy(retries, min(base, mid), mid, attempt_max).max_window <= budget:
            lo = mid
        else:
            hi = mid
    # A cap under 50 ms is no backoff at all: better one retry fewer.
    return RetryPolicy(retries, min(base, lo), lo, attempt_max) if lo >= 0.05 else None
