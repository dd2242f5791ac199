#!/usr/bin/env bash
# Records one importer of the corpus again: installs it (setup.sh), starts
# it on a free loopback port (serve.sh), puts `taphook record` in front of
# it, plays a successful session and a failing one through the proxy
# (drive.py, drive.py --fail), stops, and writes the recording to
# <importer>/session.har.
#   usage: record.sh IMPORTER [TAPHOOK_BIN]
#   e.g.   tests/data/importers/record.sh datasette-upload-csvs target/debug/taphook
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
name="${1:?usage: record.sh IMPORTER [TAPHOOK_BIN]}"
bin="$(realpath "${2:-$here/../../../target/debug/taphook}")"
dir="$here/$name"
[ -d "$dir" ] || { echo "no importer $name in $here" >&2; exit 2; }

work="$(mktemp -d /tmp/taphook-corpus.XXXXXX)"
chmod 755 "$work"   # serve.sh may run a server as another user (PostgreSQL)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
    for _ in $(seq 1 1200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

bash "$dir/setup.sh" >&2
upstream="$(free_port)"
proxy="$(free_port)"
# serve.sh may take PORT+1 as well (pgadmin4's PostgreSQL).
while [ "$proxy" = $((upstream + 1)) ]; do proxy="$(free_port)"; done
bash "$dir/serve.sh" "$upstream" "$work/importer" >"$work/importer.log" 2>&1 &
pids+=($!)
wait_port "$upstream"
"$bin" record --upstream "http://127.0.0.1:$upstream" --listen "127.0.0.1:$proxy" \
    --out "$work/out" 2>"$work/record.log" &
recorder=$!
pids+=($recorder)
wait_port "$proxy"
python3 "$dir/drive.py" "http://127.0.0.1:$proxy" --quiet | tee "$work/sessions.jsonl"
python3 "$dir/drive.py" "http://127.0.0.1:$proxy" --fail --quiet | tee -a "$work/sessions.jsonl"
kill -INT "$recorder"
wait "$recorder" || true
har=$(ls "$work"/out/*.har)
# The drivers print the sessions' cookies and tokens: none may be in the
# recording (they are replaced by pseudonyms).
python3 - "$work/sessions.jsonl" "$har" <<'PY'
import json, sys
text = open(sys.argv[2]).read()
for line in open(sys.argv[1]):
    for key, value in json.loads(line).items():
        secret = any(w in key for w in ("csrf", "session", "token", "cookie"))
        if secret and isinstance(value, str) and len(value) >= 8 and value in text:
            sys.exit(f"the recording holds {key} in clear")
PY
cp "$har" "$dir/session.har"
grep -E '^(recorded|next)' "$work/record.log" >&2 || true
echo "wrote $dir/session.har" >&2
