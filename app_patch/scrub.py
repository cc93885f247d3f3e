"""What never leaves for Sentry: result payloads and secrets. Pure; shared by the app patch
and the operator."""

from __future__ import annotations

import re

FILTERED = "[Filtered]"
URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@")
SECRET_KEY = re.compile(r"pass|secret|token|auth|cookie|dsn|api_?key|credential|session", re.I)


def scrub(value, key: str = ""):
    """Task arguments (the results), request bodies, passwords in URLs and values under
    secret-looking keys, anywhere in an event."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            ks = str(k)
            if ks in ("args", "kwargs") and key == "celery-job":
                out[k] = FILTERED
            elif ks == "data" and key == "request":
                out[k] = FILTERED
            elif SECRET_KEY.search(ks) and isinstance(v, (str, bytes, int, float)) and v not in ("", None):
                out[k] = FILTERED
            else:
                out[k] = scrub(v, ks)
        return out
    if isinstance(value, list):
        return [scrub(v, key) for v in value]
    if isinstance(value, tuple):
        return tuple(scrub(v, key) for v in value)
    if isinstance(value, str):
        return URL_PASSWORD.sub(r"\1" + FILTERED + "@", value)
    return value
