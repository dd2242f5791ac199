#!/usr/bin/env bash
# Install pgAdmin 4 (PyPI wheel "pgadmin4" and its pinned dependencies) into a
# venv.  Idempotent: a second run with the same requirements.txt does nothing.
# Needs PostgreSQL's server binaries too (Debian: apt-get install postgresql);
# this script only checks for them.
#   usage: setup.sh [VENV_DIR]     (default /tmp/importers/pgadmin4/venv)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-/tmp/importers/pgadmin4/venv}"
req="$here/requirements.txt"
stamp="$venv/.taphook-requirements"
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"          # one install at a time into this venv
flock 9
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then
    echo "pgadmin4: already installed in $venv"
    exit 0
fi
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
cp "$req" "$stamp"
echo "pgadmin4: installed in $venv"
ls -d /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 ||
    echo "pgadmin4: warning: no PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql)" >&2
