"""Shared fixtures for the local stack tests."""

from __future__ import annotations

from typing import Iterator

import pytest

from blipguard.localstack.rabbitmq import RabbitMQServer


@pytest.fixture(scope="session")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQServer]:
    """One RabbitMQ node for the session (it takes several seconds to boot)."""
    server = RabbitMQServer(tmp_path_factory.mktemp("rabbit"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
