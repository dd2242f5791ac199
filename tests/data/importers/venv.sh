#!/usr/bin/env bash
# The install every importer's setup.sh does: its pinned requirements.txt
# into a venv, idempotently (a stamp of the requirements; a second run with
# the same file does nothing) and one install at a time per venv (a lock).
#   usage: venv.sh NAME DIR [VENV] [BIN]
#     NAME  the importer (for messages); DIR its directory (requirements.txt)
#     VENV  default /tmp/importers/NAME/venv; BIN a program the venv must hold
set -euo pipefail
name="$1"
req="$2/requirements.txt"
venv="${3:-/tmp/importers/$name/venv}"
bin="${4:-python}"
stamp="$venv/.taphook-requirements"
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if [ -x "$venv/bin/$bin" ] && [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then
    echo "$name: already installed in $venv"
    exit 0
fi
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
cp "$req" "$stamp"
echo "$name: installed in $venv"
