#!/usr/bin/env bash
# Efficiency harness: what taphook costs while its receiver is away and
# then back, in one run (per binary):
#   0 untapped   wrk on a path no route taps: the proxy's CPU per request;
#   1 sustained  the receiver answers 410 Gone (the first delivery disables
#                the webhook, everything else stays pending) while wrk
#                creates embed sessions for DURATION s: exchanges tapped,
#                dropped at a full tap queue, RSS sampled every second;
#   2 backlog    more load (20 s wrk runs, at most MAX_LOAD_S s) until
#                PENDING deliveries wait: RSS at that backlog, and the bytes
#                each pending delivery adds beyond the caches (RSS growth
#                between the end of phases 1 and 2 over pending growth);
#   3 drain      the receiver's own ceiling (wrk POSTing an event-sized body
#                straight to it), then the webhook is enabled and the outbox
#                drains: events/s against that ceiling, CPU per event;
#   4            CPU per event, proxying excluded: taphook's CPU over
#                phases 1 to 3 minus the tapped requests at phase 0's
#                untapped cost, over the events delivered.
# The importer upstream and the receiver are nginx (no other CPU in
# taphook's way); everything on 127.0.0.1. With BASELINE_BIN the same run is
# repeated for that binary (fresh data dir and process; the nginx are
# reused) and the table adds new/baseline ratios.
#
# Usage: benches/load/efficiency.sh   (make bench runs it)
#   DURATION=60 PENDING=1000000 MAX_LOAD_S=300 CONNS=32 DRAIN_TIMEOUT=900
#   BIN=path          the binary (default: cargo build --release)
#   BASELINE_BIN=path a second binary measured the same way
#   CONCURRENCY=n     delivery.concurrency_per_webhook (taphook's default: 16)
#   TAP_QUEUE=n       tap.queue_capacity (taphook's default: 10,000)
#   DEDUP_CAPACITY=n  dedup.capacity (default 1,000,000: the dedup set fills
#                     while the backlog grows; smaller shows the growth
#                     beyond full caches)
# Writes target/bench/efficiency.md and target/bench/efficiency.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-60}
PENDING=${PENDING:-1000000}
MAX_LOAD_S=${MAX_LOAD_S:-300}
CONNS=${CONNS:-32}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-900}
for tool in wrk nginx; do
  command -v "$tool" >/dev/null || { echo "installing $tool"; ${SUDO:-} apt-get update -qq && ${SUDO:-} apt-get install -y -qq "$tool" >/dev/null; }
done
if [ -z "${BIN:-}" ]; then cargo build --release --quiet; BIN=$PWD/target/release/taphook; fi
BUILDS=("new=$BIN")
[ -n "${BASELINE_BIN:-}" ] && BUILDS+=("baseline=$BASELINE_BIN")
OUT=$PWD/target/bench
mkdir -p "$OUT"
rm -rf "$OUT"/efficiency-*
WORK=$(mktemp -d)
. benches/load/lib.sh
chmod 711 "$WORK"   # nginx workers (nobody) stat $WORK/gone
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.2
  [ -n "${RAWDIR:-}" ] && cp "$DIR/taphook.log" "$RAWDIR/" 2>/dev/null; rm -rf "$WORK"
}
trap cleanup EXIT
UP=$(port); SINK=$(port)
TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')   # the admin API's, for this run

# The importer: a fresh session id per embed; anything else is untapped.
importer_conf "$UP"
# The receiver: 410 Gone while $WORK/gone exists, 200 otherwise.
nginx_conf sink "server { listen 127.0.0.1:$SINK; location /hooks { if (-f $WORK/gone) { return 410; } return 200; } }"
nginx -c "$WORK/importer/nginx.conf" -g 'daemon off;' & PIDS+=($!)
nginx -c "$WORK/sink/nginx.conf" -g 'daemon off;' & PIDS+=($!)
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$SINK/hooks" && curl -s -o /dev/null "http://127.0.0.1:$UP/" && break; sleep 0.1; done

rss_kib() { awk -v f="$2" '$1 == f {print $2}' "/proc/$1/status"; }
# The sum of a metric's series whose labels include every given label="value".
metric() {
  local name=$1; shift
  curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$name" -v want="$*" '
    index($0, m) == 1 && substr($0, length(m) + 1, 1) ~ /[{ ]/ {
      n = split(want, w, " "); ok = 1
      for (i = 1; i <= n; i++) if (!index($0, w[i])) ok = 0
      if (ok) s += $NF
    }
    END { printf "%d\n", s }'
}
up() { kill -0 "$TPID" 2>/dev/null || { echo "taphook exited; its log:" >&2; tail -20 "$DIR/taphook.log" >&2; exit 1; }; }
now() { date +%s.%N; }
since() { python3 -c "import time; print(round(time.time() - $1, 1))"; }
# Tapped: answered 2xx (wrk's last requests of a run, cut off, are not).
tapped() { metric taphook_proxy_requests_total 'route="create-embed"' 'status_class="2xx"'; }
pending() { metric taphook_outbox_pending 'webhook="bench"'; }
delivered() { metric taphook_deliveries_total 'webhook="bench"' 'outcome="delivered"'; }
load() { # seconds: wrk creating embed sessions through taphook
  wrk -t1 -c"$CONNS" -d"${1}s" -s benches/load/post.lua "http://127.0.0.1:$TP/v1/embeds" >>"$RAWDIR/wrk-load.txt"
}
sampler() { # file: taphook's VmRSS (KiB) once a second until killed
  ( while kill -0 "$TPID" 2>/dev/null; do rss_kib "$TPID" VmRSS: >>"$1"; sleep 1; done ) &
  SAMPLER=$!; PIDS+=($SAMPLER)
}
# Every tapped exchange derived or dropped (≤120 s), the pending gauge (which
# refreshes every ~2 s) steady over 3 s (≤60 s), then 5 s idle.
settle() {
  local seen=0 want=0 prev=-1 cur
  for _ in $(seq 240); do
    up; want=$(tapped)
    seen=$(( $(metric taphook_events_derived_total) + $(metric taphook_events_dropped_total 'reason="tap_queue_full"') ))
    [ "$seen" -ge "$want" ] && break
    sleep 0.5
  done
  [ "$seen" -ge "$want" ] || echo "warning: $((want - seen)) tapped exchanges neither derived nor dropped after 120 s" >&2
  for _ in $(seq 20); do
    up; cur=$(pending)
    [ "$cur" = "$prev" ] && break
    prev=$cur; sleep 3
  done
  sleep 5
}
raw() { echo "$1 $2" >>"$RAWDIR/raw.txt"; }

measure() { # label, binary
  local label=$1 bin=$2 t0 c0 n extra reached
  RAWDIR=$OUT/efficiency-$label; mkdir -p "$RAWDIR"
  DIR=$WORK/taphook-$label; mkdir -p "$DIR/rules"
  TP=$(port); ADMIN=$(port)
  cat >"$DIR/taphook.yaml" <<CONF
listen: 127.0.0.1:$TP
upstream: http://127.0.0.1:$UP
admin_listen: 127.0.0.1:$ADMIN
admin_token: $TOKEN
rules_dir: rules
data_dir: data
delivery:
  allow_private_networks: [127.0.0.0/8]   # the receiver is on loopback
${CONCURRENCY:+  concurrency_per_webhook: $CONCURRENCY}
${DEDUP_CAPACITY:+dedup:
  capacity: $DEDUP_CAPACITY}
${TAP_QUEUE:+tap:
  queue_capacity: $TAP_QUEUE}
CONF
  cat >"$DIR/rules/bench.yaml" <<RULES
routes:
  - name: create-embed
    event: embed_initialized
    method: POST
    path: /v1/embeds
    session: \$response.body.id
webhooks:
  - key: bench
    url: http://127.0.0.1:$SINK/hooks
    events: ["*"]
RULES
  (cd "$DIR" && "$bin" check --config taphook.yaml) >"$RAWDIR/check.txt" 2>&1 ||
    { echo "$label: invalid config or rules:" >&2; cat "$RAWDIR/check.txt" >&2; exit 1; }
  rm -f "$WORK/gone"
  (cd "$DIR" && RUST_LOG=warn exec "$bin" run --config taphook.yaml >taphook.log 2>&1) & PIDS+=($!)
  TPID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null || { up; echo "$label: not ready after 10 s" >&2; exit 1; }
  echo "== $label: $bin" >&2
  raw binary "$bin"

  # 0: untapped requests.
  c0=$(ticks "$TPID")
  wrk -t1 -c"$CONNS" -d10s "http://127.0.0.1:$TP/other" >"$RAWDIR/wrk-untapped.txt"
  raw untapped_ticks $(( $(ticks "$TPID") - c0 ))
  raw untapped_requests "$(awk '/requests in/ {print $1}' "$RAWDIR/wrk-untapped.txt")"

  # 1: sustained load, receiver gone.
  touch "$WORK/gone"
  t0=$(now); c0=$(ticks "$TPID")
  sampler "$RAWDIR/rss-sustained.txt"
  load "$DURATION"
  kill "$SAMPLER"
  raw sustained_tapped "$(tapped)"
  raw sustained_load_s "$(since "$t0")"
  settle
  raw sustained_s "$(since "$t0")"
  raw sustained_dropped "$(metric taphook_events_dropped_total 'reason="tap_queue_full"')"
  raw sustained_derived "$(metric taphook_events_derived_total)"
  raw sustained_pending "$(pending)"
  raw sustained_rss_kib "$(rss_kib "$TPID" VmRSS:)"
  raw webhook_disabled "$(metric taphook_webhook_disabled 'webhook="bench"')"

  # 2: backlog up to PENDING.
  t0=$(now); extra=0
  sampler "$RAWDIR/rss-backlog.txt"
  while [ "$(pending)" -lt "$PENDING" ] && [ "$extra" -lt "$MAX_LOAD_S" ]; do
    up; n=$(( MAX_LOAD_S - extra < 20 ? MAX_LOAD_S - extra : 20 ))
    load "$n"; extra=$((extra + n))
    echo "   backlog: $(pending) pending after $extra s of extra load" >&2
  done
  settle
  kill "$SAMPLER"
  raw backlog_load_s "$extra"
  raw backlog_s "$(since "$t0")"
  raw tapped "$(tapped)"
  raw dropped "$(metric taphook_events_dropped_total 'reason="tap_queue_full"')"
  raw dropped_all "$(metric taphook_events_dropped_total)"
  raw derived "$(metric taphook_events_derived_total)"
  raw cut_off "$(metric taphook_proxy_requests_total 'route="create-embed"' 'status_class="other"')"
  reached=$(pending)
  raw backlog_pending "$reached"
  raw backlog_rss_kib "$(rss_kib "$TPID" VmRSS:)"
  raw backlog_hwm_kib "$(rss_kib "$TPID" VmHWM:)"
  raw data_bytes "$(du -sb "$DIR/data" | cut -f1)"
  raw load_ticks $(( $(ticks "$TPID") - c0 ))
  curl -s "http://127.0.0.1:$ADMIN/metrics" >"$RAWDIR/metrics-backlog.txt"

  # 3: drain. First the receiver's ceiling, then enable the webhook.
  rm -f "$WORK/gone"
  wrk -t1 -c"$CONNS" -d10s -s benches/load/event.lua "http://127.0.0.1:$SINK/hooks" >"$RAWDIR/wrk-receiver.txt"
  raw receiver_rps "$(awk '/Requests\/sec/ {print $2}' "$RAWDIR/wrk-receiver.txt")"
  local d0 d=0 code deadline
  d0=$(delivered)
  t0=$(now); c0=$(ticks "$TPID")
  code=$(curl -s -o "$RAWDIR/enable.txt" -w '%{http_code}' -X POST \
    -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$ADMIN/v1/event-webhooks/bench/enable")
  [[ $code == 2* ]] || { echo "$label: enable answered $code: $(cat "$RAWDIR/enable.txt")" >&2; exit 1; }
  deadline=$(( $(date +%s) + DRAIN_TIMEOUT ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    up; d=$(( $(delivered) - d0 ))
    [ "$d" -ge "$reached" ] && break
    sleep 0.5
  done
  raw drain_s "$(since "$t0")"
  raw drain_ticks $(( $(ticks "$TPID") - c0 ))
  raw drained "$d"
  raw drain_complete "$([ "$d" -ge "$reached" ] && echo 1 || echo 0)"
  raw drain_rss_kib "$(rss_kib "$TPID" VmRSS:)"
  raw drain_hwm_kib "$(rss_kib "$TPID" VmHWM:)"
  curl -s "http://127.0.0.1:$ADMIN/metrics" >"$RAWDIR/metrics-drain.txt"

  # SIGINT: stop fast. Bounded, then KILL.
  kill -INT "$TPID" 2>/dev/null || true
  for _ in $(seq 60); do kill -0 "$TPID" 2>/dev/null || break; sleep 0.5; done
  kill -KILL "$TPID" 2>/dev/null || true
  cp "$DIR/taphook.log" "$RAWDIR/"; rm -rf "$DIR/data"
}

for b in "${BUILDS[@]}"; do measure "${b%%=*}" "${b#*=}"; done

python3 - "$OUT" "$DURATION" "$CONNS" "$PENDING" ${BUILDS[@]%%=*} <<'PY'
import json, os, sys
out, duration, conns, pending_goal, labels = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:]
tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
def read(label):
    d = {}
    for line in open(f"{out}/efficiency-{label}/raw.txt"):
        k, v = line.rstrip("\n").split(" ", 1)
        try: d[k] = float(v)
        except ValueError: d[k] = v
    for phase in ("sustained", "backlog"):
        try: d[f"rss_{phase}_kib"] = [int(x) for x in open(f"{out}/efficiency-{label}/rss-{phase}.txt").read().split()]
        except FileNotFoundError: d[f"rss_{phase}_kib"] = []
    s = d["rss_sustained_kib"] or [0]
    untapped_us = d["untapped_ticks"] * tick_us / max(d["untapped_requests"], 1)
    d.update(
        dropped_pct=100 * d["sustained_dropped"] / max(d["sustained_tapped"], 1),
        dropped_all_pct=100 * d["dropped"] / max(d["tapped"], 1),
        rss_first_mib=s[0] / 1024, rss_max_mib=max(s) / 1024, rss_last_mib=s[-1] / 1024,
        backlog_rss_mib=d["backlog_rss_kib"] / 1024,
        # None when phase 1 already reached PENDING: no growth to divide by.
        bytes_per_pending=(d["backlog_rss_kib"] - d["sustained_rss_kib"]) * 1024 / (d["backlog_pending"] - d["sustained_pending"])
        if d["backlog_pending"] > d["sustained_pending"] else None,
        drain_rps=d["drained"] / max(d["drain_s"], 0.001),
        untapped_cpu_us=untapped_us,
        drain_cpu_us=d["drain_ticks"] * tick_us / max(d["drained"], 1),
        cpu_per_event_us=(d["load_ticks"] * tick_us - d["tapped"] * untapped_us + d["drain_ticks"] * tick_us) / max(d["drained"], 1),
    )
    d["drain_pct"] = 100 * d["drain_rps"] / max(d["receiver_rps"], 1)
    return d
res = {l: read(l) for l in labels}
rows = [  # figure, goal, key in the results, format
    ("tapped exchanges, sustained phase", "", "sustained_tapped", "{:,.0f}"),
    ("dropped at a full tap queue", "0", "sustained_dropped", "{:,.0f}"),
    ("dropped, % of tapped", "0 %", "dropped_pct", "{:.1f} %"),
    ("dropped at a full tap queue, phases 1 and 2", "0", "dropped", "{:,.0f}"),
    ("dropped, % of tapped, phases 1 and 2", "0 %", "dropped_all_pct", "{:.1f} %"),
    ("RSS first / max / last, sustained (MiB)", "", None, None),
    ("pending reached", f"{pending_goal:,}", "backlog_pending", "{:,.0f}"),
    ("RSS at that backlog (MiB)", "≤ 256 at 1,000,000", "backlog_rss_mib", "{:.0f}"),
    ("bytes per pending delivery beyond the caches", "≈ 0", "bytes_per_pending", "{:,.0f}"),
    ("data dir at that backlog (MiB)", "", "data_mib", "{:,.0f}"),
    ("receiver ceiling (req/s)", "", "receiver_rps", "{:,.0f}"),
    ("drain (events/s)", "", "drain_rps", "{:,.0f}"),
    ("drain, % of the receiver's ceiling", "≥ 50 %", "drain_pct", "{:.0f} %"),
    ("proxy CPU per untapped request (µs)", "", "untapped_cpu_us", "{:.1f}"),
    ("CPU per delivered event, drain only (µs)", "", "drain_cpu_us", "{:.1f}"),
    ("CPU per event, proxying excluded (µs)", "≤ 50", "cpu_per_event_us", "{:.1f}"),
]
for d in res.values():
    d["data_mib"] = d["data_bytes"] / 1048576
names = {"new": "taphook" if len(labels) == 1 else "new", "baseline": "baseline"}
head = ["figure", "goal"] + [names[l] for l in labels] + (["new/baseline"] if len(labels) == 2 else [])
lines = [
    f"wrk -t1 -c{conns}: {duration} s sustained POST /v1/embeds with the receiver answering 410 Gone, "
    f"more load up to {pending_goal:,} pending, then the drain with the receiver answering 200.",
    "",
    "| " + " | ".join(head) + " |",
    "|" + " --- |" * len(head),
]
for name, goal, key, fmt in rows:
    if key is None:
        cells = [f"{d['rss_first_mib']:.0f} / {d['rss_max_mib']:.0f} / {d['rss_last_mib']:.0f}" for d in res.values()]
        ratio = [f"{res['new']['rss_max_mib'] / max(res['baseline']['rss_max_mib'], 1):.2f}x (max)"] if len(labels) == 2 else []
    else:
        cells = ["-" if d[key] is None else fmt.format(d[key]) for d in res.values()]
        ratio = []
        if len(labels) == 2:
            n, b = res["new"][key], res["baseline"][key]
            ratio = [f"{n / b:.2f}x" if n is not None and b else "-"]
    lines.append("| " + " | ".join([name, goal] + cells + ratio) + " |")
lines.append("")
for l, d in res.items():
    lines.append(
        f"{names[l]}: sustained phase {d['sustained_s']:.0f} s ({d['sustained_load_s']:.0f} s of load), "
        f"backlog {d['backlog_s']:.0f} s ({d['backlog_load_s']:.0f} s of load), drain {d['drain_s']:.0f} s; "
        f"{d['tapped']:,.0f} tapped, {d['derived']:,.0f} derived, {d['dropped']:,.0f} dropped in all; "
        f"{d['drained']:,.0f} delivered in the drain; peak RSS {d['drain_hwm_kib'] / 1024:.0f} MiB."
        + ("" if d["drain_complete"] else f" The drain did not finish within DRAIN_TIMEOUT: its rate is what it reached so far, "
          "and CPU per event counts only the events delivered by then.")
    )
open(f"{out}/efficiency.md", "w").write("\n".join(lines) + "\n")
json.dump({"duration": duration, "connections": conns, "pending_goal": pending_goal, "builds": res}, open(f"{out}/efficiency.json", "w"), indent=1)
print("\n".join(lines))
PY
