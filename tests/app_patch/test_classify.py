"""classify(): the one verdict on whether a failure is worth retrying."""

import asyncio
import socket

import pytest
from nats import errors as nats_errors
from redis import exceptions as redis_errors

from blipguard.app_patch.classify import Classification, Kind, classify
from blipguard.app_patch.errors import JobStateMissing, TransientDependencyError

RESET_BY_PEER = "Error 104 while reading from 127.0.0.1:6379 : (104, 'Connection reset by peer')"


def raised_from(outer: BaseException, cause: BaseException) -> BaseException:
    """`outer` as it looks after `raise outer from cause` in real code."""
    try:
        try:
            raise cause
        except BaseException as inner:
            raise outer from inner
    except BaseException as e:
        return e


@pytest.mark.parametrize(
    "exc",
    [
        redis_errors.ConnectionError(RESET_BY_PEER),
        redis_errors.ConnectionError("Error 111 connecting to redis:6379. Connection refused."),
        redis_errors.TimeoutError("Timeout reading from socket"),
        redis_errors.BusyLoadingError("Redis is loading the dataset in memory"),
        redis_errors.TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"),
        redis_errors.ReadOnlyError("You can't write against a read only replica."),
        redis_errors.MasterDownError("MASTERDOWN Link with MASTER is down"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_redis_outage_errors_are_transient_for_redis(exc):
    c = classify(exc)
    assert c == Classification(Kind.TRANSIENT, "redis")
    assert c.transient


@pytest.mark.parametrize(
    "exc",
    [
        redis_errors.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        redis_errors.AuthenticationError("invalid username-password pair or user is disabled."),
        redis_errors.AuthorizationError("NOPERM this user has no permissions"),
        redis_errors.DataError("Invalid input of type: 'NoneType'"),
        redis_errors.OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'."),
    ],
    ids=lambda e: type(e).__name__,
)
def test_redis_errors_that_will_not_heal_are_not_retried(exc):
    c = classify(exc)
    assert c.kind is Kind.UNEXPECTED
    assert not c.transient
    assert c.dependency == "redis"


@pytest.mark.parametrize(
    "exc",
    [
        nats_errors.NoServersError(),
        nats_errors.TimeoutError(),
        nats_errors.ConnectionClosedError(),
        nats_errors.NoRespondersError(),
        nats_errors.StaleConnectionError(),
        nats_errors.ConnectionReconnectingError(),
        nats_errors.UnexpectedEOF(),
        nats_errors.FlushTimeoutError(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_nats_outage_errors_are_transient_for_nats(exc):
    # nats.errors.TimeoutError is also a builtin TimeoutError: it must still be blamed on nats.
    assert classify(exc) == Classification(Kind.TRANSIENT, "nats")


@pytest.mark.parametrize(
    "exc",
    [nats_errors.BadSubjectError(), nats_errors.AuthorizationError(), nats_errors.MaxPayloadError()],
    ids=lambda e: type(e).__name__,
)
def test_nats_errors_that_will_not_heal_are_not_retried(exc):
    assert classify(exc) == Classification(Kind.UNEXPECTED, "nats")


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionResetError(104, "Connection reset by peer"),
        ConnectionRefusedError(111, "Connection refused"),
        BrokenPipeError(32, "Broken pipe"),
        socket.timeout("timed out"),
        asyncio.TimeoutError(),
        TimeoutError("timed out"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_builtin_network_errors_are_transient(exc):
    c = classify(exc)
    assert c.kind is Kind.TRANSIENT
    assert c.dependency == ""  # no library named it; the caller supplies a default


@pytest.mark.parametrize(
    "exc",
    [ValueError("bad value"), KeyError("total"), TypeError("nope"), RuntimeError("boom"), OSError("disk full")],
    ids=lambda e: type(e).__name__,
)
def test_plain_errors_are_unexpected(exc):
    assert classify(exc) == Classification(Kind.UNEXPECTED, "")
    assert not classify(exc).transient


def test_wrapped_redis_connection_error_is_transient_via_cause():
    # What django-redis does: `raise ConnectionInterrupted(...) from e`.
    wrapped = raised_from(RuntimeError("cache unavailable"), redis_errors.ConnectionError(RESET_BY_PEER))
    assert wrapped.__cause__ is not None
    assert classify(wrapped) == Classification(Kind.TRANSIENT, "redis")


def test_cause_is_followed_through_several_wrappers():
    inner = raised_from(KeyError("x"), nats_errors.NoServersError())
    outer = raised_from(ValueError("y"), inner)
    assert classify(outer) == Classification(Kind.TRANSIENT, "nats")


def test_wrapped_builtin_connection_reset_is_transient():
    wrapped = raised_from(RuntimeError("lost the connection"), ConnectionResetError(104, "reset"))
    assert classify(wrapped).transient


def test_unexpected_cause_leaves_the_wrapper_unexpected():
    wrapped = raised_from(RuntimeError("outer"), ValueError("inner"))
    assert classify(wrapped) == Classification(Kind.UNEXPECTED, "")


def test_only_explicit_cause_is_followed_not_implicit_context():
    # `raise X` inside an except block sets __context__ only; that is not "caused by".
    try:
        try:
            raise redis_errors.ConnectionError(RESET_BY_PEER)
        except redis_errors.ConnectionError:
            raise ValueError("bug in the handler")
    except ValueError as e:
        exc = e
    assert exc.__context__ is not None and exc.__cause__ is None
    assert classify(exc).kind is Kind.UNEXPECTED


def test_non_transient_redis_error_is_not_rescued_by_a_transient_cause():
    # A definite verdict from redis itself wins over anything further down the chain.
    exc = raised_from(redis_errors.ResponseError("WRONGTYPE ..."), ConnectionResetError())
    assert classify(exc) == Classification(Kind.UNEXPECTED, "redis")


def test_self_referencing_cause_does_not_loop():
    exc = ValueError("self")
    exc.__cause__ = exc
    assert classify(exc) == Classification(Kind.UNEXPECTED, "")


def test_cause_cycle_is_classified_instead_of_recursing():
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__cause__, b.__cause__ = b, a
    assert classify(a) == Classification(Kind.UNEXPECTED, "")


@pytest.mark.parametrize("dependency", ["redis", "nats"])
def test_transient_dependency_error_keeps_its_dependency(dependency):
    exc = TransientDependencyError(dependency, ConnectionResetError(), "update_state(process)")
    assert classify(exc) == Classification(Kind.TRANSIENT, dependency)


def test_job_state_missing_is_terminal_and_about_redis():
    c = classify(JobStateMissing(42, "Redis restarted"))
    assert c == Classification(Kind.STATE_MISSING, "redis")
    assert not c.transient


def test_wrapped_job_state_missing_keeps_its_kind():
    exc = raised_from(RuntimeError("task failed"), JobStateMissing(1, "gone"))
    assert classify(exc).kind is Kind.STATE_MISSING


def test_kind_values_are_the_stable_metric_labels():
    assert {k.value for k in Kind} == {"transient", "state_missing", "unexpected"}
