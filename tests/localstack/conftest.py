"""Shared fixtures for the local stack tests."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from blipguard.localstack.rabbitmq import RabbitMQServer
from blipguard.localstack.redis import RedisServer


@pytest.fixture(scope="session")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQServer]:
    """One RabbitMQ node for the session (it takes several seconds to boot)."""
    server = RabbitMQServer(tmp_path_factory.mktemp("rabbit"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    try:
        server.start()
        yield server
    finally:
        server.stop(save=False)
