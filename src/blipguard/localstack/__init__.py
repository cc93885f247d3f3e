"""Real local servers (postgres, redis, nats, rabbitmq, celery workers) plus fault injection."""

from .celery_workers import CeleryWorkers
from .nats import NatsServer
from .postgres import PostgresServer
from .procs import free_port, spawn, stop_pid, wait_until
from .rabbitmq import RabbitMQServer
from .redis import RedisServer
from .stack import LocalStack
from .tcpproxy import FaultProxy

__all__ = [
    "CeleryWorkers", "FaultProxy", "LocalStack", "NatsServer", "PostgresServer",
    "RabbitMQServer", "RedisServer", "free_port", "spawn", "stop_pid", "wait_until",
]
