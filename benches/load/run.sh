#!/usr/bin/env bash
# Load harness: the same upstream (the reference importer) measured with wrk
#   direct         straight to the importer;
#   nginx          through nginx as a plain reverse proxy (keep-alive upstream);
#   taphook-plain  through taphook with no routes (Pingora alone, nothing tapped);
#   taphook        through taphook with the OneSchema profile, deriving an
#                  event per request and delivering it to a local receiver
#                  (a second nginx answering 200).
# RUNS runs each (default 3), medians in the table, ratios against nginx and
# direct from the same session. Besides requests/s and latency, the CPU time
# the proxy process spent per request (from /proc; less noisy than rates on
# a shared machine), taphook's RSS, and how long its deliveries took to
# drain after the load.
#
# Usage: benches/load/run.sh [duration_s] [connections]   (make bench runs it)
#   TARGETS="nginx taphook"  a subset of the setups
#   HOOK_EVENTS='[none]'     taphook derives but delivers nothing
#   PERF=1                   perf profile of taphook (target/bench/perf.data)
# Writes target/bench/load.md and target/bench/load.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-10}
CONNS=${2:-32}
RUNS=${RUNS:-3}
TARGETS=${TARGETS:-direct nginx taphook-plain taphook}
HOOK_EVENTS=${HOOK_EVENTS:-'["*"]'}
for tool in wrk nginx; do
  command -v "$tool" >/dev/null || { echo "installing $tool"; ${SUDO:-} apt-get update -qq && ${SUDO:-} apt-get install -y -qq "$tool" >/dev/null; }
done
cargo build --release --quiet
BIN=$PWD/target/release/taphook
OUT=$PWD/target/bench
mkdir -p "$OUT"
rm -f "$OUT"/wrk-*.txt "$OUT"/cpu-*.txt "$OUT"/taphook-rss-samples.txt
WORK=$(mktemp -d)
. benches/load/lib.sh
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.2; rm -rf "$WORK"; }
trap cleanup EXIT
UP=$(port); NG=$(port); TP=$(port); ADMIN=$(port); SINK=$(port); PLAIN=$(port); PLAIN_ADMIN=$(port)

"$BIN" importer --listen 127.0.0.1:$UP >"$WORK/importer.log" 2>&1 & PIDS+=($!)
IMPORTER_PID=$!

# One nginx as the reverse proxy, another as the webhook receiver, so each
# one's CPU time is its own.
nginx_conf proxy "upstream importer { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$NG; location / { proxy_pass http://importer; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
nginx_conf sink "server { listen 127.0.0.1:$SINK; location / { return 200; } }"
nginx -c "$WORK/proxy/nginx.conf" -g 'daemon off;' & PIDS+=($!)
NGINX_PID=$!
nginx -c "$WORK/sink/nginx.conf" -g 'daemon off;' & PIDS+=($!)

taphook_conf() { # dir, listen, admin
  mkdir -p "$WORK/$1/rules"
  cat >"$WORK/$1/taphook.yaml" <<CONF
listen: 127.0.0.1:$2
upstream: http://127.0.0.1:$UP
admin_listen: 127.0.0.1:$3
rules_dir: rules
data_dir: data
delivery:
  allow_private_networks: [127.0.0.0/8]   # the sink is on loopback
CONF
}
taphook_conf tapped "$TP" "$ADMIN"
cp rules/oneschema.yaml "$WORK/tapped/rules/"
[ "$HOOK_EVENTS" = "[none]" ] && printf 'routes:\n  - name: none\n    event: none\n    path: /nothing-here\n' >"$WORK/tapped/rules/none.yaml"
cat >"$WORK/tapped/rules/hooks.yaml" <<HOOKS
webhooks:
  - key: event_webhook
    url: http://127.0.0.1:$SINK/hooks
    events: $HOOK_EVENTS
HOOKS
taphook_conf plain "$PLAIN" "$PLAIN_ADMIN"
printf 'routes:\n  - name: none\n    event: none\n    path: /nothing-here\n' >"$WORK/plain/rules/none.yaml"
(cd "$WORK/tapped" && RUST_LOG=warn exec "$BIN" run --config taphook.yaml >taphook.log 2>&1) & PIDS+=($!)
TAPHOOK_PID=$!
(cd "$WORK/plain" && RUST_LOG=warn exec "$BIN" run --config taphook.yaml >taphook.log 2>&1) & PIDS+=($!)
PLAIN_PID=$!
for a in "$ADMIN" "$PLAIN_ADMIN"; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$a/readyz" >/dev/null && break; sleep 0.1; done
done
sleep 0.5

rss_mib() { awk -v f="$2" '$1 == f {print int($2/1024)}' "/proc/$1/status"; }
metric() { curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" 'index($0, m) == 1 {s += $NF} END {printf "%d\n", s}'; }

TAPHOOK_TICKS0=$(ticks "$TAPHOOK_PID")
for target in $TARGETS; do
  [ "$target" = taphook ] && TAPHOOK_TICKS0=$(ticks "$TAPHOOK_PID")
  case $target in
    direct) url=http://127.0.0.1:$UP; pid=$IMPORTER_PID ;;
    nginx) url=http://127.0.0.1:$NG; pid=$NGINX_PID ;;
    taphook-plain) url=http://127.0.0.1:$PLAIN; pid=$PLAIN_PID ;;
    taphook) url=http://127.0.0.1:$TP; pid=$TAPHOOK_PID ;;
    *) echo "unknown target $target"; exit 2 ;;
  esac
  for run in $(seq "$RUNS"); do
    if [ "$target" = taphook ]; then
      # RSS once a second while the load runs: does it level off?
      ( while kill -0 "$TAPHOOK_PID" 2>/dev/null; do rss_mib "$TAPHOOK_PID" VmRSS: >>"$OUT/taphook-rss-samples.txt"; sleep 1; done ) &
      SAMPLER=$!
    fi
    if [ "$target" = taphook ] && [ "${PERF:-0}" = 1 ]; then
      perf record -F 499 -g -o "$OUT/perf.data" -p "$TAPHOOK_PID" -- sleep "$DURATION" 2>/dev/null &
      PERF_PID=$!
    fi
    before=$(ticks "$pid"); up_before=$(ticks "$IMPORTER_PID")
    wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -s benches/load/post.lua "$url/v1/embeds" >"$OUT/wrk-$target-$run.txt"
    echo "$(( $(ticks "$pid") - before )) $(( $(ticks "$IMPORTER_PID") - up_before ))" >"$OUT/cpu-$target-$run.txt"
    if [ -n "${PERF_PID:-}" ]; then wait "$PERF_PID" || true; PERF_PID=; fi
    if [ -n "${SAMPLER:-}" ]; then kill "$SAMPLER" 2>/dev/null || true; SAMPLER=; echo "--" >>"$OUT/taphook-rss-samples.txt"; fi
  done
done

# taphook's deliveries after the load: how long the outbox took to drain.
DRAIN_S=0
if [[ " $TARGETS " == *" taphook "* ]] && [ "$HOOK_EVENTS" != "[none]" ]; then
  derived=$(metric taphook_events_derived_total)
  start=$(date +%s.%N)
  for _ in $(seq 1200); do
    [ "$(metric 'taphook_deliveries_total{outcome="delivered"')" -ge "$derived" ] && break
    sleep 0.25
  done
  DRAIN_S=$(python3 -c "import time; print(round(time.time() - $start, 1))")
fi
echo $(( $(ticks "$TAPHOOK_PID") - TAPHOOK_TICKS0 )) >"$OUT/taphook-total-ticks.txt"
curl -s "http://127.0.0.1:$ADMIN/metrics" >"$OUT/taphook-metrics.txt"
printf '%s %s %s\n' "$(rss_mib "$TAPHOOK_PID" VmHWM:)" "$(rss_mib "$TAPHOOK_PID" VmRSS:)" \
  "$(( $(stat -c %s "$WORK/tapped/data/taphook.db-wal" 2>/dev/null || echo 0) / 1048576 ))" >"$OUT/taphook-rss-mib.txt"
printf '%s %s\n' "$(rss_mib "$PLAIN_PID" VmHWM:)" "$(rss_mib "$PLAIN_PID" VmRSS:)" >"$OUT/plain-rss-mib.txt"

python3 - "$OUT" "$RUNS" "$DURATION" "$CONNS" "$DRAIN_S" "$TARGETS" <<'PY'
import json, os, re, statistics, sys
out, runs, duration, conns, drain, targets = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5]), sys.argv[6].split()
tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
def ms(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
res = {}
for t in targets:
    rows = []
    for r in range(1, runs + 1):
        text = open(f"{out}/wrk-{t}-{r}.txt").read()
        requests = int(re.search(r"(\d+) requests in", text).group(1))
        cpu, upstream_cpu = map(int, open(f"{out}/cpu-{t}-{r}.txt").read().split())
        rows.append({
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
            "p50": ms(re.search(r"\s50%\s+(\S+)", text).group(1)),
            "p99": ms(re.search(r"\s99%\s+(\S+)", text).group(1)),
            "cpu_us": cpu * tick_us / requests,
            "upstream_cpu_us": upstream_cpu * tick_us / requests,
        })
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        if errors:
            print(f"warning: {t} run {r}: {errors.group(1)} non-2xx responses")
    res[t] = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
    res[t]["runs"] = rows
labels = {
    "direct": "direct to the importer",
    "nginx": "nginx reverse proxy",
    "taphook-plain": "taphook, no routes (nothing tapped)",
    "taphook": "taphook (deriving + delivering)",
}
lines = [
    f"wrk -t2 -c{conns} -d{duration}s, POST /v1/embeds, median of {runs} runs",
    "",
    "| setup | requests/s | p50 | p99 | proxy CPU per request | importer CPU per request |",
    "| --- | --- | --- | --- | --- | --- |",
]
for t in targets:
    r = res[t]
    cpu = "-" if t == "direct" else f"{r['cpu_us']:.0f} µs"
    lines.append(f"| {labels[t]} | {r['rps']:,.0f} | {r['p50']:.2f} ms | {r['p99']:.2f} ms | {cpu} | {r['upstream_cpu_us']:.0f} µs |")
lines.append("")
for t in ("taphook-plain", "taphook"):
    if t in res and "nginx" in res:
        n, x = res["nginx"], res[t]
        d = res.get("direct")
        lines.append(
            f"{t}/nginx: {x['rps']/n['rps']:.2f}x requests/s, p99 {x['p99']/n['p99']:.2f}x, CPU per request {x['cpu_us']/n['cpu_us']:.1f}x"
            + (f"; {t}/direct: {x['rps']/d['rps']:.2f}x requests/s." if d else ".")
        )
summary = {"targets": res, "duration": duration, "connections": conns, "runs": runs}
if "taphook" in res:
    metrics = open(f"{out}/taphook-metrics.txt").read()
    def metric(name):
        return sum(float(l.split()[-1]) for l in metrics.splitlines() if l.startswith(name))
    derived = metric("taphook_events_derived_total")
    delivered = metric('taphook_deliveries_total{outcome="delivered"')
    dropped = metric("taphook_events_dropped_total")
    hwm, rss, wal = open(out + "/taphook-rss-mib.txt").read().split()
    total_us = int(open(out + "/taphook-total-ticks.txt").read()) * tick_us / max(derived, 1)
    lines.append(
        f"taphook: {derived:,.0f} events derived, {dropped:,.0f} dropped, {delivered:,.0f} delivered "
        f"(the outbox drained {drain:.1f} s after the load); {total_us:.0f} µs of CPU per event, "
        f"proxy to delivery, drain included; RSS {rss} MiB at the end, peak {hwm} MiB; WAL file {wal} MiB."
    )
    try:
        runs_rss = [
            [int(x) for x in block.split()]
            for block in open(f"{out}/taphook-rss-samples.txt").read().split("--")
            if block.split()
        ]
        lines.append(
            "taphook RSS (MiB) at the end of each run: "
            + ", ".join(str(r[-1]) for r in runs_rss)
            + f"; sampled every second: {' / '.join(' '.join(map(str, r)) for r in runs_rss)}."
        )
        summary["rss_samples_mib"] = runs_rss
    except FileNotFoundError:
        pass
    summary.update(total_cpu_us_per_event=total_us, wal_mib=int(wal), derived=derived, delivered=delivered, dropped=dropped, drain_s=drain, rss_mib=int(rss), peak_rss_mib=int(hwm))
open(f"{out}/load.md", "w").write("\n".join(lines) + "\n")
json.dump(summary, open(f"{out}/load.json", "w"), indent=1)
print("\n".join(lines))
PY
