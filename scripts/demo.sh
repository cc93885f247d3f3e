#!/usr/bin/env bash
# The main job: sets up what it needs, then runs the demo on an embedded local stack.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/blipguard demo "$@"
