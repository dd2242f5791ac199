#!/usr/bin/env bash
# Load harness: the same upstream (the reference importer) measured with wrk
# (a) directly, (b) through nginx as a plain reverse proxy, and (c) through
# taphook with the OneSchema profile deriving an event per request and
# delivering it to a local receiver (nginx answering 200). Three runs each;
# the table has medians and the ratios taphook/nginx and taphook/direct.
#
# Usage: benches/load/run.sh [duration_s] [connections]   (make bench runs it)
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-10}
CONNS=${2:-32}
RUNS=${RUNS:-3}
# The event types the receiver's webhook takes; `[none]` derives without delivering.
HOOK_EVENTS=${HOOK_EVENTS:-'["*"]'}
for tool in wrk nginx; do
  command -v "$tool" >/dev/null || { echo "installing $tool"; ${SUDO:-} apt-get update -qq && ${SUDO:-} apt-get install -y -qq "$tool" >/dev/null; }
done
cargo build --release --quiet
BIN=$PWD/target/release/taphook
OUT=$PWD/target/bench
mkdir -p "$OUT"
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(port); NG=$(port); TP=$(port); ADMIN=$(port); SINK=$(port)

"$BIN" importer --listen 127.0.0.1:$UP >"$WORK/importer.log" 2>&1 & PIDS+=($!)

cat >"$WORK/nginx.conf" <<NGINX
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/body; proxy_temp_path $WORK/proxy;
  fastcgi_temp_path $WORK/fcgi; uwsgi_temp_path $WORK/uwsgi; scgi_temp_path $WORK/scgi;
  upstream importer { server 127.0.0.1:$UP; keepalive 64; }
  server {
    listen 127.0.0.1:$NG;
    location / { proxy_pass http://importer; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
  server {
    listen 127.0.0.1:$SINK;
    location / { return 200; }
  }
}
NGINX
nginx -c "$WORK/nginx.conf" -g 'daemon off;' & PIDS+=($!)

mkdir -p "$WORK/rules"
cp rules/oneschema.yaml "$WORK/rules/"
[ "$HOOK_EVENTS" = "[none]" ] && printf 'routes:\n  - name: none\n    event: none\n    path: /nothing-here\n' >"$WORK/rules/none.yaml"
cat >"$WORK/rules/hooks.yaml" <<HOOKS
webhooks:
  - key: event_webhook
    url: http://127.0.0.1:$SINK/hooks
    events: $HOOK_EVENTS
HOOKS
cat >"$WORK/taphook.yaml" <<CONF
listen: 127.0.0.1:$TP
upstream: http://127.0.0.1:$UP
admin_listen: 127.0.0.1:$ADMIN
rules_dir: rules
data_dir: data
CONF
RUST_LOG=warn "$BIN" run --config "$WORK/taphook.yaml" >"$WORK/taphook.log" 2>&1 & PIDS+=($!)
TAPHOOK_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null && break; sleep 0.1; done
sleep 0.5

rss() { awk '/VmHWM/ {print int($2/1024)}' "/proc/$1/status"; }
for target in direct nginx taphook; do
  case $target in direct) url=http://127.0.0.1:$UP ;; nginx) url=http://127.0.0.1:$NG ;; taphook) url=http://127.0.0.1:$TP ;; esac
  for run in $(seq $RUNS); do
    wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -s benches/load/post.lua "$url/v1/embeds" >"$OUT/wrk-$target-$run.txt"
  done
done
# Let the deliveries catch up, then read taphook's own figures.
sleep 3
curl -s "http://127.0.0.1:$ADMIN/metrics" >"$OUT/taphook-metrics.txt"
echo "$(rss "$TAPHOOK_PID")" >"$OUT/taphook-rss-mib.txt"

python3 - "$OUT" "$RUNS" "$DURATION" "$CONNS" <<'PY'
import re, statistics, sys
out, runs, duration, conns = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def ms(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
res = {}
for t in ["direct", "nginx", "taphook"]:
    rps, p50, p99 = [], [], []
    for r in range(1, runs + 1):
        text = open(f"{out}/wrk-{t}-{r}.txt").read()
        rps.append(float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)))
        p50.append(ms(re.search(r"\s50%\s+(\S+)", text).group(1)))
        p99.append(ms(re.search(r"\s99%\s+(\S+)", text).group(1)))
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        if errors:
            print(f"warning: {t} run {r}: {errors.group(1)} non-2xx responses")
    res[t] = (statistics.median(rps), statistics.median(p50), statistics.median(p99))
metrics = open(f"{out}/taphook-metrics.txt").read()
def metric(name):
    return sum(float(l.split()[-1]) for l in metrics.splitlines() if l.startswith(name))
lines = [
    f"wrk -t2 -c{conns} -d{duration}s, POST /v1/embeds, median of {runs} runs",
    "",
    "| setup | requests/s | p50 | p99 |",
    "| --- | --- | --- | --- |",
]
for t, label in [("direct", "direct to the importer"), ("nginx", "nginx reverse proxy"), ("taphook", "taphook (deriving + delivering)")]:
    r = res[t]
    lines.append(f"| {label} | {r[0]:,.0f} | {r[1]:.2f} ms | {r[2]:.2f} ms |")
d, n, t = res["direct"], res["nginx"], res["taphook"]
derived = metric("taphook_events_derived_total")
delivered = metric('taphook_deliveries_total{outcome="delivered"')
dropped = metric("taphook_events_dropped_total")
rss = open(out + "/taphook-rss-mib.txt").read().strip()
lines += [
    "",
    f"taphook/nginx: {t[0]/n[0]:.2f}x requests/s, p99 {t[2]/n[2]:.2f}x; taphook/direct: {t[0]/d[0]:.2f}x requests/s.",
    f"taphook: {derived:,.0f} events derived, {delivered:,.0f} delivered, {dropped:,.0f} dropped; peak RSS {rss} MiB.",
]
open(f"{out}/load.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
