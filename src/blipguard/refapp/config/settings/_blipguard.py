"""What a host adds to install blipguard's app_patch (README, "Installing app_patch"),
shared by ``pre_patched`` and ``head_patched``. The environment knobs are test-only:
the suite varies timeouts, client retries, task retries and the breaker per test."""

import os

from blipguard.app_patch.redis_options import cache_options


def install(namespace: dict) -> None:
    namespace["INSTALLED_APPS"] = [*namespace["INSTALLED_APPS"], "blipguard.app_patch"]
    cache = namespace["CACHES"]["default"]
    cache["OPTIONS"] = cache_options(
        cache["OPTIONS"],
        socket_timeout=float(os.environ.get("BLIPGUARD_SOCKET_TIMEOUT", "2")),
        connect_timeout=float(os.environ.get("BLIPGUARD_CONNECT_TIMEOUT", "2")),
        retries=int(os.environ.get("BLIPGUARD_REDIS_RETRIES", "1")),
        client_name=os.environ.get("BLIPGUARD_REDIS_CLIENT_NAME") or None,
    )
    namespace["BLIPGUARD"] = {
        "MAX_RETRIES": int(os.environ.get("BLIPGUARD_MAX_RETRIES", "6")),
        "BREAKER": os.environ.get("BLIPGUARD_BREAKER", "1") == "1",
        "METRICS_PORT": int(os.environ["BLIPGUARD_METRICS_PORT"]) if os.environ.get("BLIPGUARD_METRICS_PORT") else None,
        "METRICS_ADDRESS": "127.0.0.1",
    }
