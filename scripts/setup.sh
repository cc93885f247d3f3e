#!/usr/bin/env bash
# Installs everything the demo and the tests need, idempotently, on Debian 12:
# Debian servers, and three virtualenvs: .venv (current releases), .venv-pinned
# (the releases the reference platform pins today, constraints/pinned.txt) and
# .venv-pre (the releases it pinned at the pre-fix commit, constraints/pre-fix.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need_apt+=(rabbitmq-server)
command -v promtool >/dev/null || need_apt+=(prometheus)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

make_venv() {  # make_venv DIR EXTRAS [pip args...]
    local dir=$1 extras=$2; shift 2
    local stamp="$dir/.blipguard-stamp"
    local want
    want=$(cat pyproject.toml setup.py constraints/*.txt | sha256sum | cut -c1-16)"$extras $*"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return
    fi
    echo "setup: preparing $dir"
    [ -x "$dir/bin/python" ] || "$PY" -m venv "$dir"
    local log="$dir/setup.log"
    if ! { "$dir/bin/python" -m pip install -q --disable-pip-version-check -U pip setuptools wheel &&
           "$dir/bin/python" -m pip install -q --disable-pip-version-check -e ".[$extras]" "$@"; } >"$log" 2>&1; then
        cat "$log" >&2
        echo "setup: pip failed for $dir (log above, also in $log)" >&2
        exit 1
    fi
    echo "$want" >"$stamp"
}

# Every venv carries the operator extra: the fast tier and test collection import it.
make_venv "$ROOT/.venv" dev,operator
make_venv "$ROOT/.venv-pinned" dev,operator -c "$ROOT/constraints/pinned.txt"
make_venv "$ROOT/.venv-pre" dev,operator -c "$ROOT/constraints/pre-fix.txt"
bash scripts/setup_kube.sh
