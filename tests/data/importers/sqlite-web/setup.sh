#!/usr/bin/env bash
# Install sqlite-web (Flask + peewee) at pinned versions into a venv.
# Idempotent: a second run with the same requirements.txt does nothing.
#   usage: setup.sh [VENV_DIR]     (default /tmp/importers/sqlite-web/venv)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-/tmp/importers/sqlite-web/venv}"
req="$here/requirements.txt"
stamp="$venv/.taphook-requirements"
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"          # one install at a time into this venv
flock 9
if [ -x "$venv/bin/sqlite_web" ] && [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then
    echo "sqlite-web: already installed in $venv"
    exit 0
fi
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
cp "$req" "$stamp"
echo "sqlite-web: installed in $venv"
