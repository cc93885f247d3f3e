"""The operator's series exist at zero from a guard's first spec, and go with the guard."""

from prometheus_client import generate_latest

from blipguard.operator import metrics


def exposition() -> str:
    return generate_latest(metrics.REGISTRY).decode()


def test_a_guards_series_start_at_zero_and_are_forgotten_with_it():
    metrics.initialize("ns-zero", "g", ["redis", "nats"])
    text = exposition()
    for line in (
        'blipguard_operator_blips_total{dependency="redis",guard="g",namespace="ns-zero"} 0.0',
        'blipguard_operator_restarts_seen_total{dependency="nats",guard="g",namespace="ns-zero"} 0.0',
        'blipguard_operator_broadcasts_total{command="pause",guard="g",namespace="ns-zero",outcome="failed"} 0.0',
        'blipguard_operator_blip_duration_seconds_count{dependency="redis",guard="g",namespace="ns-zero"} 0.0',
        'blipguard_operator_paused{guard="g",namespace="ns-zero"} 0.0',
    ):
        assert line in text, line
    metrics.forget("ns-zero", "g")
    assert 'namespace="ns-zero"' not in exposition()
