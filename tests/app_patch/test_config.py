"""The BLIPGUARD setting: sensible defaults, and errors that say what to fix."""

import copy

import pytest

from blipguard.app_patch.config import DEFAULT_HELPERS, DEFAULT_TARGETS, DEFAULTS, Config, parse
from blipguard.app_patch.errors import ConfigurationError
from blipguard.app_patch.retry_policy import RetryPolicy


@pytest.mark.parametrize("raw", [None, {}])
def test_defaults_parse(raw):
    c = parse(raw)
    assert isinstance(c, Config)
    assert c.auto_patch is True and c.strict is False
    assert c.targets == DEFAULT_TARGETS and c.helpers == DEFAULT_HELPERS
    assert c.ack_wait_source == "ami.ml.orchestration.nats_queue.TASK_TTR" and c.ack_wait is None
    assert c.max_retries == 6 and isinstance(c.max_retries, int)
    assert (c.backoff_base, c.backoff_max) == (1.0, 30.0)
    assert c.retry_budget_fraction == 0.8 and c.ack_timeout == 5.0
    assert c.result_queue is None and c.cache_alias == "default"


def test_default_retry_settings_survive_a_ten_second_blip():
    c = parse(None)
    assert RetryPolicy(c.max_retries, c.backoff_base, c.backoff_max).min_window > 10


def test_explicit_defaults_parse_to_the_same_config():
    assert parse(copy.deepcopy(DEFAULTS)) == parse(None)


def test_parse_does_not_modify_the_setting():
    raw = {"MAX_RETRIES": 3, "TARGETS": {"JOB_MODEL": "myapp.models.Job"}}
    before = copy.deepcopy(raw)
    parse(raw)
    assert raw == before
    assert DEFAULT_TARGETS["JOB_MODEL"] == "ami.jobs.models.Job"


def test_overrides_are_applied():
    c = parse({"MAX_RETRIES": 3, "BACKOFF_MAX": 10, "ACK_WAIT": 300, "STRICT": True, "RESULT_QUEUE": "results"})
    assert c.max_retries == 3 and c.backoff_max == 10.0 and c.ack_wait == 300.0
    assert isinstance(c.backoff_max, float) and isinstance(c.ack_wait, float)
    assert c.strict is True and c.result_queue == "results"


def test_unknown_top_level_key_names_it_and_lists_known_keys():
    with pytest.raises(ConfigurationError) as info:
        parse({"MAX_RETRY": 3})
    message = str(info.value)
    assert "'MAX_RETRY'" in message
    assert "known keys" in message
    for key in DEFAULTS:
        assert f"'{key}'" in message


@pytest.mark.parametrize(
    "value, why",
    [(-1, ">= 0"), ("6", "must be a number"), (True, "must be a number"), (None, "must be a number"), (2.5, "whole")],
    ids=repr,
)
def test_bad_max_retries_is_rejected_naming_the_key(value, why):
    with pytest.raises(ConfigurationError, match=r"BLIPGUARD\['MAX_RETRIES'\]") as info:
        parse({"MAX_RETRIES": value})
    assert why in str(info.value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("value", [0, 6.0])
def test_whole_max_retries_is_accepted(value):
    c = parse({"MAX_RETRIES": value})
    assert c.max_retries == int(value) and isinstance(c.max_retries, int)


@pytest.mark.parametrize(
    "key, value",
    [
        ("BACKOFF_BASE", 0),
        ("BACKOFF_BASE", "1"),
        ("BACKOFF_MAX", -3),
        ("BACKOFF_MAX", False),
        ("RETRY_BUDGET_FRACTION", 0),
        ("ACK_TIMEOUT", 0),
        ("ACK_TIMEOUT", "5"),
        ("ACK_WAIT", 0.5),
        ("ACK_WAIT", "300"),
    ],
    ids=repr,
)
def test_bad_numbers_are_rejected_naming_the_key(key, value):
    with pytest.raises(ConfigurationError, match=rf"BLIPGUARD\['{key}'\]"):
        parse({key: value})


@pytest.mark.parametrize(
    "key, value",
    [("MAX_RETRIES", float("inf")), ("MAX_RETRIES", float("nan")), ("BACKOFF_BASE", float("nan"))],
    ids=repr,
)
def test_non_finite_numbers_are_rejected_naming_the_key(key, value):
    with pytest.raises(ConfigurationError, match=rf"BLIPGUARD\['{key}'\]"):
        parse({key: value})


@pytest.mark.parametrize("key", ["AUTO_PATCH", "STRICT", "BREAKER"])
@pytest.mark.parametrize("value", [1, "yes", None])
def test_flags_must_be_booleans(key, value):
    with pytest.raises(ConfigurationError, match=rf"BLIPGUARD\['{key}'\] must be True or False"):
        parse({key: value})


@pytest.mark.parametrize(
    ("key", "value"),
    [(k, v) for k in ("ACK_WAIT_SOURCE", "RESULT_QUEUE", "CACHE_ALIAS") for v in ("", 5)]
    + [("ACK_WAIT_SOURCE", None), ("CACHE_ALIAS", None)],
)
def test_names_must_be_non_empty_strings(key, value):
    with pytest.raises(ConfigurationError, match=rf"BLIPGUARD\['{key}'\] must be a non-empty string"):
        parse({key: value})


def test_targets_with_unknown_key_is_rejected():
    with pytest.raises(ConfigurationError) as info:
        parse({"TARGETS": {"JOB_MODELS": "myapp.models.Job"}})
    message = str(info.value)
    assert "BLIPGUARD['TARGETS']" in message and "'JOB_MODELS'" in message
    for key in DEFAULT_TARGETS:
        assert f"'{key}'" in message


def test_partial_targets_override_merges_with_defaults():
    c = parse({"TARGETS": {"JOB_MODEL": "myapp.models.Job"}})
    assert c.targets["JOB_MODEL"] == "myapp.models.Job"
    assert c.targets == {**DEFAULT_TARGETS, "JOB_MODEL": "myapp.models.Job"}
    assert c.helpers == DEFAULT_HELPERS


def test_partial_helpers_override_merges_with_defaults():
    c = parse({"HELPERS": {"ACK": "ack_via_nats"}})
    assert c.helpers == {**DEFAULT_HELPERS, "ACK": "ack_via_nats"}
    assert c.targets == DEFAULT_TARGETS


def test_helpers_with_unknown_key_is_rejected():
    with pytest.raises(ConfigurationError, match=r"BLIPGUARD\['HELPERS'\] has unknown keys \['NACK'\]"):
        parse({"HELPERS": {"NACK": "nack"}})


@pytest.mark.parametrize("key", ["TARGETS", "HELPERS"])
@pytest.mark.parametrize("value", [["JOB_MODEL"], "ami.jobs.models.Job", None])
def test_mappings_must_be_dicts(key, value):
    with pytest.raises(ConfigurationError, match=rf"BLIPGUARD\['{key}'\] must be a dict"):
        parse({key: value})


@pytest.mark.parametrize("value", ["", None, 3])
def test_target_paths_must_be_non_empty_strings(value):
    with pytest.raises(ConfigurationError, match=r"BLIPGUARD\['TARGETS'\]\['JOB_MODEL'\]"):
        parse({"TARGETS": {"JOB_MODEL": value}})
