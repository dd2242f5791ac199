#!/usr/bin/env bash
# Install Django + django-import-export at pinned versions into a venv.
# Idempotent: a second run with the same requirements.txt does nothing.
#   usage: setup.sh [VENV_DIR]     (default /tmp/importers/django-import-export/venv)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-/tmp/importers/django-import-export/venv}"
req="$here/requirements.txt"
stamp="$venv/.taphook-requirements"
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"          # one install at a time into this venv
flock 9
if [ -x "$venv/bin/django-admin" ] && [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then
    echo "django-import-export: already installed in $venv"
    exit 0
fi
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
cp "$req" "$stamp"
echo "django-import-export: installed in $venv"
