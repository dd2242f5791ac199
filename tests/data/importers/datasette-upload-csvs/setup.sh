#!/usr/bin/env bash
# Install datasette + datasette-upload-csvs (+ datasette-auth-passwords for the
# login form) at pinned versions into a venv.  Idempotent: a second run with the
# same requirements.txt does nothing.
#   usage: setup.sh [VENV_DIR]     (default /tmp/importers/datasette-upload-csvs/venv)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-/tmp/importers/datasette-upload-csvs/venv}"
req="$here/requirements.txt"
stamp="$venv/.taphook-requirements"
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"          # one install at a time into this venv
flock 9
if [ -x "$venv/bin/datasette" ] && [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then
    echo "datasette-upload-csvs: already installed in $venv"
    exit 0
fi
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
cp "$req" "$stamp"
echo "datasette-upload-csvs: installed in $venv"
