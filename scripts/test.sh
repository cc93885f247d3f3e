#!/usr/bin/env bash
# The whole test suite: sets up what it needs, then runs every test against current
# releases and the fault-path tests against the releases the reference platform pins.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== current releases: whole suite"
.venv/bin/python -m pytest "$@"
echo "== pinned releases (constraints/pinned.txt): incident, chaos, system-check and pause tests"
.venv-pinned/bin/python -m pytest -m "incident or chaos or checks or (pause and not outage)" "$@"
