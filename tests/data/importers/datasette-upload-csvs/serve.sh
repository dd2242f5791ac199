#!/usr/bin/env bash
# Start datasette with the datasette-upload-csvs plugin on 127.0.0.1:PORT, in the
# foreground, with a fresh empty database in WORKDIR (default: a new temp dir).
#   usage: serve.sh PORT [WORKDIR]
#   env:   VENV (default /tmp/importers/datasette-upload-csvs/venv)
# Login: username "root", password "import-me" (datasette-auth-passwords).
set -euo pipefail
port="${1:?usage: serve.sh PORT [WORKDIR]}"
workdir="${2:-$(mktemp -d /tmp/datasette-upload-csvs.XXXXXX)}"
venv="${VENV:-/tmp/importers/datasette-upload-csvs/venv}"
mkdir -p "$workdir"
rm -f "$workdir/data.db" "$workdir/data.db-wal" "$workdir/data.db-shm"
"$venv/bin/python" - "$workdir/data.db" <<'PY'
import sqlite3, sys
sqlite3.connect(sys.argv[1]).execute("PRAGMA user_version = 1")  # create an empty file database
PY
# pbkdf2 hash of the password "import-me" (fixed salt, so no work at start-up)
cat > "$workdir/metadata.json" <<'JSON'
{
  "plugins": {
    "datasette-auth-passwords": {
      "root_password_hash": "pbkdf2_sha256$480000$taphooktestsalt0$+hyN2QKGIdEOvQQBfJC06Ke6z2SoXVqZYXmScUE+lfI="
    }
  }
}
JSON
cd "$workdir"
export DATASETTE_SECRET="${DATASETTE_SECRET:-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}"
exec "$venv/bin/datasette" serve data.db --host 127.0.0.1 --port "$port" \
    --metadata metadata.json --setting num_sql_threads 2
