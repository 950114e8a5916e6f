#!/usr/bin/env bash
# Create interop/.venv with the pinned real Python oslo.messaging used by the wire-interop
# tests (tests/tests/interop_rabbit.rs). Idempotent: a fast no-op when the venv already has
# the pinned version. Prints the venv's python path as the last line.
#
#   bash interop/setup-venv.sh            # create / verify
#   PYTHON=python3.12 bash interop/setup-venv.sh
#   INTEROP_VENV_RECREATE=1 bash interop/setup-venv.sh   # wipe and rebuild
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
REQ="$HERE/requirements.txt"
PY="${PYTHON:-python3}"
PIN_NAME="oslo.messaging"
PIN_VERSION="$(sed -n 's/^oslo\.messaging==\([^[:space:]]*\).*/\1/p' "$REQ")"
if [[ -z "$PIN_VERSION" ]]; then
    echo "setup-venv: cannot read the oslo.messaging pin from $REQ" >&2
    exit 1
fi

if [[ "${INTEROP_VENV_RECREATE:-0}" == 1 ]]; then
    rm -rf "$VENV"
fi

venv_ok() {
    [[ -x "$VENV/bin/python" ]] || return 1
    local have
    have="$("$VENV/bin/python" -m pip show "$PIN_NAME" 2>/dev/null | sed -n 's/^Version: //p')" || return 1
    [[ "$have" == "$PIN_VERSION" ]] || return 1
    # The import must work too (a half-finished install leaves pip metadata behind).
    "$VENV/bin/python" -c 'import oslo_messaging, oslo_config' >/dev/null 2>&1
}

if venv_ok; then
    echo "setup-venv: $PIN_NAME $PIN_VERSION already installed in $VENV" >&2
    echo "$VENV/bin/python"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup-venv: creating $VENV with $($PY --version 2>&1)" >&2
    if ! "$PY" -m venv "$VENV"; then
        # Debian/Ubuntu system pythons need the python3-venv package for ensurepip.
        echo "setup-venv: '$PY -m venv' failed; on Debian/Ubuntu: apt-get install -y python3-venv" >&2
        rm -rf "$VENV"
        exit 1
    fi
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
"$VENV/bin/python" -m pip install --quiet --upgrade pip setuptools wheel >&2
"$VENV/bin/python" -m pip install --quiet -r "$REQ" >&2

if ! venv_ok; then
    echo "setup-venv: $PIN_NAME $PIN_VERSION is not importable in $VENV after install" >&2
    exit 1
fi
echo "setup-venv: installed $PIN_NAME $PIN_VERSION into $VENV" >&2
echo "$VENV/bin/python"
