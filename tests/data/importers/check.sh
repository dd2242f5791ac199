#!/usr/bin/env bash
# End-to-end check of one importer: setup.sh, serve.sh on PORT (fresh WORKDIR
# /tmp/verify-NAME), drive.py twice, drive.py --fail, then stop the server
# (SIGTERM to its process group) and look for leftovers.
# Logs: /tmp/verify-NAME.serve.log, /tmp/verify-NAME.transcript[--fail].log
#   usage: check.sh NAME PORT
set -u
name=${1:?usage: check.sh NAME PORT}; port=${2:?usage: check.sh NAME PORT}
dir="$(cd "$(dirname "$0")" && pwd)/$name"
work=/tmp/verify-$name
rm -rf "$work"
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
t0=$EPOCHREALTIME
"$dir/setup.sh" || { echo "$name: setup failed"; exit 1; }
t1=$EPOCHREALTIME
setsid "$dir/serve.sh" "$port" "$work" >"/tmp/verify-$name.serve.log" 2>&1 &
spid=$!
for _ in $(seq 240); do
    python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.2); sys.exit(s.connect_ex(('127.0.0.1',$port)))" && break
    kill -0 "$spid" 2>/dev/null || { echo "$name: serve.sh died"; tail "/tmp/verify-$name.serve.log"; exit 1; }
    sleep 0.25
done
t2=$EPOCHREALTIME
echo "$name: setup $(secs "$t0" "$t1") s, server ready $(secs "$t1" "$t2") s"
rc=0
for v in "" "" "--fail"; do
    s=$EPOCHREALTIME
    out=$(python3 "$dir/drive.py" "http://127.0.0.1:$port" $v 2>"/tmp/verify-$name.transcript$v.log")
    r=$?
    printf '  drive %-6s rc=%d %ss %s\n' "${v:-ok}" "$r" "$(secs "$s" "$EPOCHREALTIME")" "$out"
    [ "$r" = 0 ] || rc=1
done
kill -TERM -- "-$spid" 2>/dev/null || kill -TERM "$spid"
sleep 3
if pgrep -af -- "$work" >/dev/null; then
    echo "  LEFTOVER processes:"; pgrep -af -- "$work"; rc=1
else
    echo "  server stopped cleanly"
fi
exit $rc
