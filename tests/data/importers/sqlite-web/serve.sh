#!/usr/bin/env bash
# Start sqlite-web on 127.0.0.1:PORT in the foreground, password-protected, on a
# fresh empty database in WORKDIR (default: a new temp dir).
#   usage: serve.sh PORT [WORKDIR]
#   env:   VENV (default /tmp/importers/sqlite-web/venv)
# Login: password "import-me" (no user name).
set -euo pipefail
port="${1:?usage: serve.sh PORT [WORKDIR]}"
workdir="${2:-$(mktemp -d /tmp/sqlite-web.XXXXXX)}"
venv="${VENV:-/tmp/importers/sqlite-web/venv}"
mkdir -p "$workdir"
rm -f "$workdir/data.db" "$workdir/data.db-wal" "$workdir/data.db-shm"
"$venv/bin/python" - "$workdir/data.db" <<'PY'
import sqlite3, sys
sqlite3.connect(sys.argv[1]).execute("PRAGMA user_version = 1")  # create an empty file database
PY
cd "$workdir"
export SQLITE_WEB_PASSWORD=import-me PYTHONUNBUFFERED=1
# -P: ask for a password (taken from SQLITE_WEB_PASSWORD); -x: open no browser
exec "$venv/bin/sqlite_web" --host 127.0.0.1 --port "$port" -x -P data.db
