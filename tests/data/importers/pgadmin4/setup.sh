#!/usr/bin/env bash
# Install pgAdmin 4 (PyPI wheel "pgadmin4" and its pinned dependencies) into a venv; PostgreSQL's server binaries are needed too (Debian: apt-get install postgresql).
# Idempotent: a second run with the same requirements.txt does nothing.
#   usage: setup.sh [VENV_DIR]     (default /tmp/importers/pgadmin4/venv)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bash "$here/../venv.sh" pgadmin4 "$here" "${1:-/tmp/importers/pgadmin4/venv}" python
ls -d /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 ||
    echo "pgadmin4: warning: no PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql)" >&2
