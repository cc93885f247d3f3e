from __future__ import annotations

import pytest
from kombu import Connection, Producer, Queue

from blipguard.localstack.procs import pid_alive
from blipguard.localstack.rabbitmq import RabbitMQServer

pytestmark = pytest.mark.stack


def test_durable_queue_survives_restart(rabbit: RabbitMQServer) -> None:
    assert rabbit.queue_depth("missing") == 0
    assert rabbit.consumer_count("missing") == 0
    with Connection(rabbit.url) as conn:
        Queue("durable-q", durable=True)(conn.default_channel).declare()
        Producer(conn.default_channel).publish({"n": 1}, routing_key="durable-q", delivery_mode=2)
    assert rabbit.queue_depth("durable-q") == 1
    port, old_pid, old_epmd = rabbit.port, rabbit.pid, rabbit.epmd_pid
    rabbit.restart()
    assert rabbit.port == port
    assert not pid_alive(old_pid) and not pid_alive(old_epmd)
    assert rabbit.queue_depth("durable-q") == 1

