#!/usr/bin/env bash
# The whole test suite: sets up what it needs, then runs a deliberate matrix of pytest
# processes, one platform version each (one Django per process):
#   .venv-pre    --platform pre-fix : incident, chaos, checks, pause (not outage), refapp,
#                                     worker metrics and Sentry (sentry-sdk 1.40, the platform's pin)
#   .venv-pinned --platform current : incident, smoke, checks, refapp
#   .venv        --platform current : everything (the full chaos suite, outages, kube)
#   .venv        --platform pre-fix : smoke, refapp, the operator-guarded job
# Every fault-path test also runs on the other release sets by hand, e.g.
#   .venv-pinned/bin/python -m pytest --platform current -m chaos
# Fast tier (pure logic, ~10 s): `.venv/bin/python -m pytest tests/app_patch tests/guard`.
# Arguments are passed to every pytest run. Exit code 5 (no tests collected for a
# selection) does not fail the script; any other failure does, after the whole matrix ran.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1

failed=0
run() {  # run LABEL VENV PYTEST-ARGS...
    local label=$1 venv=$2; shift 2
    echo "== $label"
    "$venv/bin/python" -m pytest "$@"
    local rc=$?
    if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then
        echo "== FAILED ($rc): $label" >&2
        failed=1
    fi
}

run "pre-fix releases, pre-fix platform" .venv-pre --platform pre-fix \
    -m "incident or chaos or checks or (pause and not outage) or refapp or (observability and stack and not kube)" "$@"
run "pinned releases, current platform" .venv-pinned --platform current \
    -m "incident or smoke or checks or refapp" "$@"
run "current releases, current platform: whole suite" .venv --platform current "$@"
run "current releases, pre-fix platform" .venv --platform pre-fix -m "smoke or refapp or operator_job" "$@"
exit $failed
