"""Fixtures of the observability tests: promtool.

promtool comes from Debian's ``prometheus`` package (``bash scripts/setup.sh``); without
it the tests fail (they do not skip): an unchecked rule file would look like a green one.
"""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found on PATH: run `bash scripts/setup.sh` (Debian's prometheus package)",
                    pytrace=False)
    return path
