#!/usr/bin/env bash
# Start a throw-away PostgreSQL 15 cluster and pgAdmin 4 (server mode) on
# 127.0.0.1:PORT, pgAdmin in the foreground, everything fresh in WORKDIR
# (default: a new temp dir).  PostgreSQL listens on 127.0.0.1:$PG_PORT
# (default PORT+1) with trust auth.  Both run as children of this script, in
# its process group: SIGTERM/SIGINT to the script, or to the group, stops both
# (a SIGKILL to the script alone leaves them running).
#   usage: serve.sh PORT [WORKDIR]
#   env:   VENV (default /tmp/importers/pgadmin4/venv), PG_PORT, PG_BINDIR
# Login: admin@example.org / import-me.  The server "local" (database
# "importdb", table public.people(id int primary key, name, email, score int))
# is registered for that user.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
port="${1:?usage: serve.sh PORT [WORKDIR]}"
workdir="${2:-$(mktemp -d /tmp/pgadmin4.XXXXXX)}"
venv="${VENV:-/tmp/importers/pgadmin4/venv}"
pg_port="${PG_PORT:-$((port + 1))}"
bindir="${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}"
[ -x "$bindir/postgres" ] || { echo "serve.sh: no PostgreSQL server binaries (apt-get install postgresql)" >&2; exit 1; }
export PG_BINDIR="$bindir"
pkg="$("$venv/bin/python" -c 'import os, pgadmin4; print(os.path.dirname(pgadmin4.__file__))' 2>/dev/null ||
       ls -d "$venv"/lib/python3*/site-packages/pgadmin4 | head -1)"

mkdir -p "$workdir"
workdir="$(cd "$workdir" && pwd)"
rm -rf "$workdir/pgdata" "$workdir/pgadmin-data" "$workdir/pgadmin4.log"
chmod 755 "$workdir"

# --- PostgreSQL (postgres refuses to run as root: run it as the postgres user)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
mkdir -p "$workdir/pgdata"
[ "$(id -u)" = 0 ] && chown postgres: "$workdir/pgdata"
as_pg "$bindir/initdb" -D "$workdir/pgdata" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
# postgres runs as a child of this script (same process group: a kill of the
# group stops it too), not daemonised by pg_ctl
pg_args=(-D "$workdir/pgdata" -c listen_addresses=127.0.0.1 -c port="$pg_port"
         -c unix_socket_directories="$workdir/pgdata" -c fsync=off -c logging_collector=off)
if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$bindir/postgres" "${pg_args[@]}" >"$workdir/postgres.log" 2>&1 &
else
    "$bindir/postgres" "${pg_args[@]}" >"$workdir/postgres.log" 2>&1 &
fi
pg_pid=$!
child=
cleanup() {
    set +e
    [ -n "$child" ] && kill "$child" 2>/dev/null && wait "$child" 2>/dev/null
    local pm
    pm="$(head -1 "$workdir/pgdata/postmaster.pid" 2>/dev/null)"
    [ -n "$pm" ] && kill -INT "$pm" 2>/dev/null      # fast shutdown
    wait "$pg_pid" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
for _ in $(seq 100); do
    "$bindir/pg_isready" -q -h 127.0.0.1 -p "$pg_port" && break
    kill -0 "$pg_pid" 2>/dev/null || { cat "$workdir/postgres.log" >&2; exit 1; }
    sleep 0.1
done
"$bindir/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
    -c "CREATE DATABASE importdb" >/dev/null
"$bindir/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -d importdb -v ON_ERROR_STOP=1 \
    -c "CREATE TABLE public.people (id integer PRIMARY KEY, name text NOT NULL, email text NOT NULL, score integer)" >/dev/null

# --- pgAdmin 4: configuration DB, the login user, the registered server
export PGADMIN_WORKDIR="$workdir" PGADMIN_PORT="$port"
export CONFIG_DISTRO_FILE_PATH="$here/config_taphook.py"
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
export PGADMIN_SETUP_EMAIL=admin@example.org PGADMIN_SETUP_PASSWORD=import-me
cat > "$workdir/servers.json" <<JSON
{"Servers": {"1": {"Name": "local", "Group": "Servers", "Host": "127.0.0.1", "Port": $pg_port,
  "MaintenanceDB": "postgres", "Username": "postgres", "SSLMode": "disable"}}}
JSON
py="$venv/bin/python"
"$py" "$pkg/setup.py" setup-db >/dev/null
"$py" "$pkg/setup.py" load-servers "$workdir/servers.json" --user admin@example.org >/dev/null
"$py" "$pkg/pgAdmin4.py" &
child=$!
wait "$child"
