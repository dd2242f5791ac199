#!/usr/bin/env bash
# Traces harness (issue 27): what OpenTelemetry traces cost on the tapped
# path, in one run, one binary, three instances of it:
#   off     traces off (no telemetry section);
#   ratio1  telemetry.otlp with sample_ratio 1.0: every request's five
#           spans (request, derive, event, outbox write, attempt) exported;
#   ratio01 sample_ratio 0.1.
# Each gets the shipped rules and a webhook, and wrk on a path the Dromo
# profile taps (a new import id per request: one event each, delivered).
# The receiver and the OTLP collector are one nginx answering 200 (the
# OTLP/HTTP exporter posts to /v1/traces), so the collector costs little of
# the two shared cores. Runs are interleaved (off, ratio1, ratio01, then
# again) and the table has medians; CPU per request is the taphook
# process's user + system time over the run and its outbox's drain, over
# its requests. The goal: at most 1.10× the CPU of `off` at ratio 1.0.
#
# Usage: benches/load/traces.sh [duration_s] [connections]
#   RUNS=3 WRK_THREADS=1 BIN=path (default: cargo build --release)
#   INSNS=1 instructions per tapped request (callgrind), each setup
#   KEEP_WORK=1 keep the work directory (callgrind files, logs)
#   PERF=1  perf profile of the sample_ratio 1.0 instance's first run
#           (target/bench/traces-perf.data)
# Writes target/bench/traces.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-10}
CONNS=${2:-32}
RUNS=${RUNS:-3}
WRK_THREADS=${WRK_THREADS:-1}
for tool in wrk nginx; do
  command -v "$tool" >/dev/null || { echo "installing $tool"; ${SUDO:-} apt-get update -qq && ${SUDO:-} apt-get install -y -qq "$tool" >/dev/null; }
done
if [ -z "${BIN:-}" ]; then cargo build --release --quiet; BIN=$PWD/target/release/taphook; fi
OUT=$PWD/target/bench
mkdir -p "$OUT"
WORK=$(mktemp -d)
. benches/load/lib.sh
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3
  if [ "${KEEP_WORK:-0}" = 1 ]; then echo "work files (callgrind, logs) kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

UP=$(port); SINK=$(port)
nginx_conf upstream "server { listen 127.0.0.1:$UP; default_type application/json;
  location ~ ^/api/v1/headless/imports/([^/]+)/\$ { return 200 '{\"id\":\"\$1\",\"status\":\"SUCCESSFUL\",\"num_data_rows\":2,\"has_data\":true}'; } }"
nginx_conf sink "server { listen 127.0.0.1:$SINK; location / { return 200; } }"
for n in upstream sink; do nginx -c "$WORK/$n/nginx.conf" -g 'daemon off;' & PIDS+=($!); done
cat >"$WORK/tapped.lua" <<'LUA'
local n = 0
local run = string.format("%x-%x", os.time(), math.floor(os.clock() * 1e6))
request = function()
  n = n + 1
  return wrk.format("GET", "/api/v1/headless/imports/" .. run .. "-" .. n .. "/")
end
LUA

declare -A PORT PID ADMIN
# start name ratio|-: a taphook with the shipped rules; traces at `ratio`.
start() {
  local name=$1 ratio=$2 listen admin
  listen=$(port); admin=$(port)
  mkdir -p "$WORK/$name/rules"
  cp rules/oneschema.yaml rules/dromo.yaml rules/flatfile.yaml "$WORK/$name/rules/"
  printf 'webhooks:\n  - key: bench\n    url: http://127.0.0.1:%s/hooks\n    events: ["*"]\n' "$SINK" >"$WORK/$name/rules/hooks.yaml"
  cat >"$WORK/$name/taphook.yaml" <<CONF
listen: 127.0.0.1:$listen
upstream: http://127.0.0.1:$UP
admin_listen: 127.0.0.1:$admin
rules_dir: rules
data_dir: data
delivery:
  allow_private_networks: [127.0.0.0/8]
CONF
  if [ "$ratio" != - ]; then
    printf 'telemetry:\n  otlp:\n    endpoint: http://127.0.0.1:%s\n    protocol: http/protobuf\n    sample_ratio: %s\n' "$SINK" "$ratio" >>"$WORK/$name/taphook.yaml"
  fi
  (cd "$WORK/$name" && RUST_LOG=warn exec "${WRAP[@]}" "$BIN" run --config taphook.yaml >taphook.log 2>&1) &
  PIDS+=($!); PORT[$name]=$listen; ADMIN[$name]=$admin
  await_taphook "$name" "$listen" "$admin"
}
SETUPS="off ratio1 ratio01"
declare -A RATIO=([off]=- [ratio1]=1.0 [ratio01]=0.1)
WRAP=()
# INSNS=1: instructions per tapped request under callgrind (every thread,
# the drain and the export included), each setup on fresh instances: one
# with a 4 s load, one left idle as long, and the difference over the
# requests (start-up and timers cancel out). Resolves what the wall clock
# cannot.
if [ "${INSNS:-0}" = 1 ]; then
  command -v valgrind >/dev/null || { ${SUDO:-} apt-get update -qq && ${SUDO:-} apt-get install -y -qq valgrind >/dev/null; }
  for s in $SETUPS; do
    for load in idle load; do
      inst=insns-$s-$load
      WRAP=(valgrind --tool=callgrind --callgrind-out-file="$WORK/$inst.callgrind")
      start "$inst" "${RATIO[$s]}"
      WRAP=()
      t0=$(date +%s)
      if [ $load = load ]; then
        wrk -t1 -c4 -d4s -s "$WORK/tapped.lua" "http://127.0.0.1:${PORT[$inst]}/" >/dev/null
        drained "${ADMIN[$inst]}" >/dev/null
      fi
      # The same time alive either way, the export's last batch included.
      sleep $(( 16 - ($(date +%s) - t0) > 6 ? 16 - ($(date +%s) - t0) : 6 ))
      requests=$(metric taphook_proxy_requests_total "${ADMIN[$inst]}")
      kill -TERM "${PID[$inst]}"
      while kill -0 "${PID[$inst]}" 2>/dev/null; do sleep 0.2; done
      sleep 1
      echo "$requests $(cat "$WORK/$inst.callgrind"* | awk '/^summary:/ {t += $2} END {print t}')" >"$WORK/$s-$load.insns"
    done
  done
fi
start off -; start ratio1 1.0; start ratio01 0.1
sleep 0.5
for run in $(seq "$RUNS"); do
  for s in $SETUPS; do
    pid=${PID[$s]}; admin=${ADMIN[$s]}
    before=$(ticks "$pid"); requests0=$(metric taphook_proxy_requests_total "$admin")
    if [ "${PERF:-0}" = 1 ] && [ "$s" = ratio1 ] && [ "$run" = 1 ]; then
      perf record -F 499 --call-graph dwarf,16384 -o "$OUT/traces-perf.data" -p "$pid" -- sleep "$DURATION" 2>/dev/null &
    fi
    wrk -t"$WRK_THREADS" -c"$CONNS" -d"${DURATION}s" -s "$WORK/tapped.lua" "http://127.0.0.1:${PORT[$s]}/" >"$WORK/$s-$run.wrk"
    drained "$admin" >/dev/null
    # Spans end with the attempt; the export's batch leaves within 5 s.
    # Every setup waits as long, so idle time weighs the same on each.
    sleep 5.5
    echo "$(( $(ticks "$pid") - before )) $(( $(metric taphook_proxy_requests_total "$admin") - requests0 ))" >"$WORK/$s-$run.cpu"
  done
done
for s in $SETUPS; do
  a=${ADMIN[$s]}
  echo "$(metric taphook_telemetry_exported_total "$a") $(metric taphook_telemetry_dropped_total "$a") $(metric taphook_outbox_accepted_total "$a") $(metric taphook_deliveries_total "$a" 'outcome="delivered"') $(metric taphook_events_dropped_total "$a")" >"$WORK/$s.counts"
done

python3 - "$WORK" "$OUT/traces.md" "$RUNS" "$DURATION" "$CONNS" "$WRK_THREADS" "$(getconf CLK_TCK)" <<'PY'
import re, statistics, sys
work, out, runs, duration, conns, threads, tck = sys.argv[1:]
runs, tick_us = int(runs), 1e6 / int(tck)
labels = {"off": "traces off", "ratio1": "sample_ratio 1.0", "ratio01": "sample_ratio 0.1"}
res = {}
for s in labels:
    rps, cpu = [], []
    for r in range(1, runs + 1):
        text = open(f"{work}/{s}-{r}.wrk").read()
        rps.append(float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)))
        ticks, requests = map(int, open(f"{work}/{s}-{r}.cpu").read().split())
        cpu.append(ticks * tick_us / max(requests, 1))
    exported, dropped, accepted, delivered, lost = map(int, open(f"{work}/{s}.counts").read().split())
    res[s] = dict(rps=statistics.median(rps), cpu=statistics.median(cpu), exported=exported,
                  dropped=dropped, accepted=accepted, delivered=delivered, lost=lost)
lines = [
    f"wrk -t{threads} -c{conns} -d{duration}s on the tapped path (one event per request, delivered), "
    f"median of {runs} interleaved runs; CPU per request is taphook's (user + system, from /proc) "
    "over the run and its outbox's drain",
    "",
    "| setup | requests/s | CPU per request | requests/s / off | CPU / off | spans exported | spans dropped | events delivered |",
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
]
off = res["off"]
for s, label in labels.items():
    r = res[s]
    lines.append(f"| {label} | {r['rps']:,.0f} | {r['cpu']:.1f} µs | {r['rps'] / off['rps']:.2f}× | "
                 f"{r['cpu'] / off['cpu']:.2f}× | {r['exported']:,} | {r['dropped']:,} | "
                 f"{r['delivered']:,} of {r['accepted']:,} ({r['lost']} dropped) |")
import os
if all(os.path.exists(f"{work}/{s}-load.insns") for s in labels):
    lines += ["", "Instructions per tapped request (callgrind, every thread, fresh instances: "
              "wrk -t1 -c4 -d4s, the drain and the export, minus an idle instance alive as long):", "",
              "| setup | requests | instructions per request | / off |", "| --- | --- | --- | --- |"]
    per = {}
    for s in labels:
        requests, loaded = open(f"{work}/{s}-load.insns").read().split()
        _, idle = open(f"{work}/{s}-idle.insns").read().split()
        per[s] = (int(requests), (int(loaded) - int(idle)) / max(int(requests), 1))
    for s, label in labels.items():
        lines.append(f"| {label} | {per[s][0]:,} | {per[s][1]:,.0f} | {per[s][1] / per['off'][1]:.2f}× |")
ratio = res["ratio1"]["cpu"] / off["cpu"]
lines += ["", f"Goal: CPU per request at sample_ratio 1.0 at most 1.10× traces off: "
          f"{ratio:.2f}×, {'met' if ratio <= 1.10 else 'missed'}"]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
