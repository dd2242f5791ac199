#!/usr/bin/env bash
# Load harness: what proxying a request costs through taphook, against
# nginx as a reverse proxy, on the same upstream, in one run:
#   direct             wrk straight to the upstream (an untapped path);
#   nginx              nginx as a keep-alive reverse proxy, untapped path;
#   nginx-tapped       nginx, on the path taphook taps (the tapped baseline);
#   pingora-bare       a bare Pingora proxy (examples/bare_proxy.rs: a
#                      ProxyHttp with one peer, same Pingora, same release
#                      profile, same allocator), untapped path: the floor;
#   pingora-bare-tapped  the same, on the path taphook taps;
#   taphook-plain      taphook with no routes: Pingora alone;
#   taphook-untapped   taphook with the shipped rules (OneSchema, Dromo,
#                      Flatfile) and a webhook, on a path no route taps;
#   taphook-tapped     the same taphook on a path the Dromo profile taps
#                      (GET /api/v1/headless/imports/{id}/ answering
#                      SUCCESSFUL, a new id per request): one event per
#                      request, delivered to a receiver. After each run the
#                      harness waits until every event is delivered, and
#                      checks none was dropped.
# The upstream is nginx answering like an importer (a row page on the
# untapped path, an import's status on the tapped one) so the upstream
# costs little of the two shared cores; the receiver is another nginx.
# Runs are interleaved (run 1 of every setup, then run 2...) and the table
# has medians. CPU per request is the proxy process's user + system time
# over the run (from /proc), over its requests: steadier than requests/s on
# a shared machine. With BASELINE_BIN, each taphook setup is also measured
# with that binary (its own processes, same run), with new/baseline ratios.
# Then, per setup, system calls per request (strace -c -f over a short
# run), with ALLOCS=1 heap allocations per request (heaptrack, on a build
# with --features system-alloc: mimalloc's calls are invisible to it) and
# with INSNS=1 instructions per request (callgrind).
#
# Usage: benches/load/run.sh [duration_s] [connections]   (make bench runs it)
#   RUNS=3 WRK_THREADS=1
#   BIN=path           the binary (default: cargo build --release)
#   BASELINE_BIN=path  the build before a change, measured the same way
#   BARE_BIN=path      the bare Pingora proxy (default: cargo build --release
#                      --example bare_proxy); it runs PROXY_THREADS threads
#                      (default 2, taphook's default on this machine)
#   TARGETS="nginx taphook-untapped"  a subset of the setups
#   STRACE=0           skip the system call counts
#   ALLOCS=1           count allocations: ALLOC_BIN (default: built with
#                      --features system-alloc) and BASELINE_ALLOC_BIN
#   INSNS=1            count instructions per request (callgrind; slow)
#   MEASURE_SETUPS="taphook-tapped"  the setups ALLOCS and INSNS measure
#   KEEP_WORK=1        keep the work directory (callgrind and heaptrack files, logs)
#   PERF=1             perf profile of taphook-untapped (target/bench/perf.data)
# Writes target/bench/load.md and target/bench/load.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-10}
CONNS=${2:-32}
RUNS=${RUNS:-3}
WRK_THREADS=${WRK_THREADS:-1}
ALL="direct nginx nginx-tapped pingora-bare pingora-bare-tapped taphook-plain taphook-untapped taphook-tapped"
TARGETS=${TARGETS:-$ALL}
tools="wrk nginx"
[ "${STRACE:-1}" = 1 ] && tools="$tools strace"
[ "${ALLOCS:-0}" = 1 ] && tools="$tools heaptrack"
[ "${INSNS:-0}" = 1 ] && tools="$tools valgrind"
for tool in $tools; do
  command -v "$tool" >/dev/null || { echo "installing $tool"; ${SUDO:-} apt-get update -qq && ${SUDO:-} apt-get install -y -qq "$tool" >/dev/null; }
done
if [ -z "${BIN:-}" ]; then cargo build --release --quiet; BIN=$PWD/target/release/taphook; fi
if [ -z "${BARE_BIN:-}" ]; then cargo build --release --quiet --example bare_proxy; BARE_BIN=$PWD/target/release/examples/bare_proxy; fi
OUT=$PWD/target/bench
mkdir -p "$OUT"
rm -rf "$OUT"/load-raw
RAW=$OUT/load-raw
mkdir -p "$RAW"
if [ "${ALLOCS:-0}" = 1 ] && [ -z "${ALLOC_BIN:-}" ]; then
  # The same code with glibc's malloc; the release build is restored after.
  cargo build --release --quiet --features system-alloc
  cp target/release/taphook "$OUT/taphook-system-alloc"
  ALLOC_BIN=$OUT/taphook-system-alloc
  cargo build --release --quiet
fi
WORK=$(mktemp -d)
. benches/load/lib.sh
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3
  if [ "${KEEP_WORK:-0}" = 1 ]; then echo "work files (callgrind, heaptrack, logs) kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

UP=$(port); NG=$(port); SINK=$(port)
UNTAPPED_PATH=/v1/embeds/0b5e7a1c/rows
nginx_conf upstream "server { listen 127.0.0.1:$UP; default_type application/json;
  location ~ ^/api/v1/headless/imports/([^/]+)/\$ { return 200 '{\"id\":\"\$1\",\"status\":\"SUCCESSFUL\",\"num_data_rows\":2,\"has_data\":true}'; }
  location / { return 200 '{\"rows\":[{\"email\":\"ada@example.com\",\"name\":\"Ada Lovelace\",\"plan\":\"pro\"},{\"email\":\"alan@example.com\",\"name\":\"Alan Turing\",\"plan\":\"free\"}],\"offset\":0,\"total\":2}'; } }"
nginx_conf proxy "upstream importer { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$NG; location / { proxy_pass http://importer; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
nginx_conf sink "server { listen 127.0.0.1:$SINK; location / { return 200; } }"
for n in upstream proxy sink; do nginx -c "$WORK/$n/nginx.conf" -g 'daemon off;' & PIDS+=($!); done
UPSTREAM_PID=${PIDS[0]}; NGINX_PID=${PIDS[1]}
BARE=$(port)
THREADS=${PROXY_THREADS:-2} "$BARE_BIN" "127.0.0.1:$BARE" "127.0.0.1:$UP" >"$WORK/bare.log" 2>&1 & PIDS+=($!)
BARE_PID=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$BARE/" && break; sleep 0.1; done
# A new import id per request, unique to this wrk run: one event each.
cat >"$WORK/tapped.lua" <<'LUA'
local n = 0
local run = string.format("%x-%x", os.time(), math.floor(os.clock() * 1e6))
request = function()
  n = n + 1
  return wrk.format("GET", "/api/v1/headless/imports/" .. run .. "-" .. n .. "/")
end
LUA

# taphook_conf dir listen admin: a config with the rules in dir/rules.
taphook_conf() {
  mkdir -p "$WORK/$1/rules"
  cat >"$WORK/$1/taphook.yaml" <<CONF
listen: 127.0.0.1:$2
upstream: http://127.0.0.1:$UP
admin_listen: 127.0.0.1:$3
rules_dir: rules
data_dir: data
delivery:
  allow_private_networks: [127.0.0.0/8]   # the receiver is on loopback
CONF
}
# rules_for dir plain|shipped
rules_for() {
  if [ "$2" = plain ]; then
    no_routes "$WORK/$1/rules"
  else
    cp rules/oneschema.yaml rules/dromo.yaml rules/flatfile.yaml "$WORK/$1/rules/"
    printf 'webhooks:\n  - key: bench\n    url: http://127.0.0.1:%s/hooks\n    events: ["*"]\n' "$SINK" >"$WORK/$1/rules/hooks.yaml"
  fi
}
declare -A PORT PID ADMIN
# start_taphook name binary plain|shipped [wrapper...]: a fresh instance.
start_taphook() {
  local name=$1 bin=$2 kind=$3; shift 3
  local listen admin
  listen=$(port); admin=$(port)
  rm -rf "${WORK:?}/$name"
  taphook_conf "$name" "$listen" "$admin"
  rules_for "$name" "$kind"
  (cd "$WORK/$name" && RUST_LOG=warn exec "$@" "$bin" run --config taphook.yaml >taphook.log 2>&1) &
  PIDS+=($!); PORT[$name]=$listen; ADMIN[$name]=$admin
  await_taphook "$name" "$listen" "$admin"
}
BUILDS=("new=$BIN")
[ -n "${BASELINE_BIN:-}" ] && BUILDS+=("baseline=$BASELINE_BIN")
SETUPS=()
for t in $TARGETS; do
  case $t in
    direct|nginx|nginx-tapped|pingora-bare|pingora-bare-tapped) SETUPS+=("$t") ;;
    taphook-plain|taphook-untapped|taphook-tapped)
      for b in "${BUILDS[@]}"; do SETUPS+=("${b%%=*}/$t"); done ;;
    *) echo "unknown target $t (one of: $ALL)"; exit 2 ;;
  esac
done
for b in "${BUILDS[@]}"; do
  name=${b%%=*}; bin=${b#*=}
  [[ " $TARGETS " == *" taphook-plain "* ]] && start_taphook "$name-plain" "$bin" plain
  [[ " $TARGETS " == *" taphook-untapped "* || " $TARGETS " == *" taphook-tapped "* ]] && start_taphook "$name-shipped" "$bin" shipped
done
sleep 0.5

# where setup: "url pid admin lua" of a setup.
where() {
  local b=${1%%/*} t=${1#*/}
  case $1 in
    direct) echo "http://127.0.0.1:$UP$UNTAPPED_PATH $UPSTREAM_PID - -" ;;
    nginx) echo "http://127.0.0.1:$NG$UNTAPPED_PATH $NGINX_PID - -" ;;
    nginx-tapped) echo "http://127.0.0.1:$NG/ $NGINX_PID - $WORK/tapped.lua" ;;
    pingora-bare) echo "http://127.0.0.1:$BARE$UNTAPPED_PATH $BARE_PID - -" ;;
    pingora-bare-tapped) echo "http://127.0.0.1:$BARE/ $BARE_PID - $WORK/tapped.lua" ;;
    */taphook-plain) echo "http://127.0.0.1:${PORT[$b-plain]}$UNTAPPED_PATH ${PID[$b-plain]} - -" ;;
    */taphook-untapped) echo "http://127.0.0.1:${PORT[$b-shipped]}$UNTAPPED_PATH ${PID[$b-shipped]} - -" ;;
    */taphook-tapped) echo "http://127.0.0.1:${PORT[$b-shipped]}/ ${PID[$b-shipped]} ${ADMIN[$b-shipped]} $WORK/tapped.lua" ;;
  esac
}
file() { echo "$RAW/$(echo "$1" | tr / _)"; }

for run in $(seq "$RUNS"); do
  for s in "${SETUPS[@]}"; do
    read -r url pid admin lua <<<"$(where "$s")"
    luaopt=(); [ "$lua" != - ] && luaopt=(-s "$lua")
    f=$(file "$s")-$run
    accepted0=0; delivered0=0
    if [ "$admin" != - ]; then
      accepted0=$(metric taphook_outbox_accepted_total "$admin")
      delivered0=$(metric taphook_deliveries_total "$admin" 'outcome="delivered"')
    fi
    if [ "$s" = new/taphook-untapped ] && [ "${PERF:-0}" = 1 ] && [ "$run" = 1 ]; then
      perf record -F 499 -g -o "$OUT/perf.data" -p "$pid" -- sleep "$DURATION" 2>/dev/null &
      PERF_PID=$!
    fi
    before=$(ticks "$pid"); up_before=$(ticks "$UPSTREAM_PID")
    wrk -t"$WRK_THREADS" -c"$CONNS" -d"${DURATION}s" --latency "${luaopt[@]}" "$url" >"$f.wrk"
    echo "$(( $(ticks "$pid") - before )) $(( $(ticks "$UPSTREAM_PID") - up_before ))" >"$f.cpu"
    if [ "$admin" != - ]; then
      # Delivered while the load ran (before the drain).
      echo $(( $(metric taphook_deliveries_total "$admin" 'outcome="delivered"') - delivered0 )) >"$f.live"
      # The outbox drains before the next run; the drain's CPU is the event's.
      drain=$(drained "$admin")
      echo "$drain $(( $(ticks "$pid") - before )) $(( $(metric taphook_outbox_accepted_total "$admin") - accepted0 ))" >"$f.drain"
    fi
    if [ -n "${PERF_PID:-}" ]; then wait "$PERF_PID" || true; PERF_PID=; fi
  done
done
# The receiver's own ceiling: wrk POSTing an event-sized body straight to
# it, what "delivery while the load runs" is measured against.
if [[ " $TARGETS " == *" taphook-tapped "* ]]; then
  cat >"$WORK/event.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"uuid":"event-6f1c2a9e-4b7d-4e21-9a53-0c8d7e5f1b2a","embed_id":"abc","environment_name":"Production","event_type":"import_succeeded","trigger_type":"user","data":{"import_id":"0b5e7a1c","num_data_rows":2},"created_at":1706112805.5}'
LUA
  wrk -t"$WRK_THREADS" -c"$CONNS" -d"${DURATION}s" -s "$WORK/event.lua" "http://127.0.0.1:$SINK/hooks" >"$RAW/receiver-ceiling.wrk"
fi
# Every tapped event delivered, none dropped.
for b in "${BUILDS[@]}"; do
  name=${b%%=*}
  [ -n "${ADMIN[$name-shipped]:-}" ] || continue
  a=${ADMIN[$name-shipped]}
  echo "$(metric taphook_events_derived_total "$a") $(metric taphook_outbox_accepted_total "$a") $(metric taphook_deliveries_total "$a" 'outcome="delivered"') $(metric taphook_events_dropped_total "$a") $(metric taphook_events_duplicate_total "$a")" >"$RAW/$name-events"
done

# System calls per request: strace -c on every thread over a short run.
if [ "${STRACE:-1}" = 1 ]; then
  for s in "${SETUPS[@]}"; do
    [ "$s" = direct ] && continue
    read -r url pid admin lua <<<"$(where "$s")"
    luaopt=(); [ "$lua" != - ] && luaopt=(-s "$lua")
    f=$(file "$s")
    pids=$pid
    [[ "$s" == nginx* ]] && pids=$(pgrep -P "$pid" | paste -sd, -)
    [[ "$s" == pingora-bare-tapped ]] && continue
    strace -c -f -p "$pids" -o "$f.strace" 2>/dev/null &
    STRACE_PID=$!
    sleep 1
    wrk -t1 -c8 -d3s "${luaopt[@]}" "$url" >"$f.strace-wrk"
    [ "$admin" != - ] && drained "$admin" >/dev/null
    kill -INT "$STRACE_PID"; wait "$STRACE_PID" 2>/dev/null || true
  done
fi

# Per request, a run with load minus one without (same length), on fresh
# instances: heap allocations (heaptrack, on the system-alloc builds) and
# instructions (callgrind: this VM has no hardware counters; every thread
# counted, the event's derive, store and delivery included when tapped).
# measure tool name binary: writes $RAW/<tool>-<name>-<setup>-<idle|load>.
measure() {
  local tool=$1 name=$2 bin=$3 t kind load inst path luaopt requests cost
  for t in ${MEASURE_SETUPS:-taphook-plain taphook-untapped taphook-tapped}; do
    kind=shipped; [ $t = taphook-plain ] && kind=plain
    for load in idle load; do
      inst=$tool-$name-$t-$load
      case $tool in
        alloc) start_taphook "$inst" "$bin" "$kind" heaptrack -o "$WORK/$inst.heaptrack" ;;
        insns) start_taphook "$inst" "$bin" "$kind" valgrind --tool=callgrind --callgrind-out-file="$WORK/$inst.callgrind" ;;
      esac
      path=$UNTAPPED_PATH; luaopt=()
      [ $t = taphook-tapped ] && { path=/; luaopt=(-s "$WORK/tapped.lua"); }
      if [ $load = load ]; then
        wrk -t1 -c4 -d4s "${luaopt[@]}" "http://127.0.0.1:${PORT[$inst]}$path" >/dev/null
        [ $t = taphook-tapped ] && drained "${ADMIN[$inst]}" >/dev/null
      else
        sleep 4
      fi
      requests=$(metric taphook_proxy_requests_total "${ADMIN[$inst]}")
      kill -TERM "${PID[$inst]}"
      while kill -0 "${PID[$inst]}" 2>/dev/null; do sleep 0.2; done
      sleep 1   # the tool writes its file after the process ends
      case $tool in
        alloc) cost=$(heaptrack_print "$WORK/$inst.heaptrack".* 2>/dev/null | awk '/^calls to allocation functions:/ {print $5}') ;;
        insns) cost=$(cat "$WORK/$inst.callgrind"* | awk '/^summary:/ {s += $2} END {print s}') ;;
      esac
      echo "$requests $cost" >"$RAW/$tool-$name-$t-$load"
    done
  done
}
if [ "${ALLOCS:-0}" = 1 ]; then
  measure alloc new "$ALLOC_BIN"
  [ -n "${BASELINE_ALLOC_BIN:-}" ] && measure alloc baseline "$BASELINE_ALLOC_BIN"
fi
if [ "${INSNS:-0}" = 1 ]; then
  measure insns new "$BIN"
  [ -n "${BASELINE_BIN:-}" ] && measure insns baseline "$BASELINE_BIN"
fi

python3 benches/load/report.py "$RAW" "$OUT" "$RUNS" "$DURATION" "$CONNS" "$WRK_THREADS" "${SETUPS[@]}"
