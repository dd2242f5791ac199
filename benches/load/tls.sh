#!/usr/bin/env bash
# TLS, HTTP/2 and upgrade harness (issue 25), in one run, on one
# certificate (ECDSA P-256, made here with openssl) and one upstream (nginx
# answering like an importer on an untapped path):
#   nginx-tls         nginx terminating TLS, keep-alive to the upstream:
#                     the reference;
#   bare-tls          a bare Pingora proxy (examples/bare_proxy.rs) with
#                     the same TLS settings: the floor;
#   plain-tls         taphook with no routes over TLS;
#   taphook-tls       taphook with the shipped rules, on a path no route
#                     taps.
# For each: keep-alive requests/s and CPU per request (wrk over HTTPS,
# HTTP/1.1), handshakes/s (wrk with `Connection: close`: a full TLS
# handshake per request, no session resumption across connections), and
# HTTP/2 requests/s (h2load, 10 streams per connection). Runs are
# interleaved and the tables have medians. Then an upgrade under load:
# wrk on taphook-tls while `taphook upgrade` replaces it; wrk's socket
# errors and non-2xx answers are the figures.
#
# Usage: benches/load/tls.sh [duration_s] [connections]
#   RUNS=3 UPGRADE_RUNS=3 WRK_THREADS=1 BIN=path (default: cargo build --release)
# Writes target/bench/tls.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-10}
CONNS=${2:-32}
RUNS=${RUNS:-3}
UPGRADE_RUNS=${UPGRADE_RUNS:-3}
WRK_THREADS=${WRK_THREADS:-1}
for pkg in wrk:wrk nginx:nginx h2load:nghttp2-client openssl:openssl; do
  command -v "${pkg%%:*}" >/dev/null || { echo "installing ${pkg#*:}"; ${SUDO:-} apt-get update -qq && ${SUDO:-} apt-get install -y -qq "${pkg#*:}" >/dev/null; }
done
if [ -z "${BIN:-}" ]; then cargo build --release --quiet; BIN=$PWD/target/release/taphook; fi
if [ -z "${BARE_BIN:-}" ]; then cargo build --release --quiet --example bare_proxy; BARE_BIN=$PWD/target/release/examples/bare_proxy; fi
OUT=$PWD/target/bench
mkdir -p "$OUT"
WORK=$(mktemp -d)
. benches/load/lib.sh
PIDS=()
cleanup() {
  # The process the upgrade started is no child of this script.
  [ -f "$WORK/taphook-tls/data/taphook.pid" ] && kill "$(cat "$WORK/taphook-tls/data/taphook.pid")" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$WORK"
}
trap cleanup EXIT

# One certificate for every setup.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null

UP=$(port); NGT=$(port)
UNTAPPED_PATH=/v1/embeds/0b5e7a1c/rows
nginx_conf upstream "server { listen 127.0.0.1:$UP; default_type application/json;
  location / { return 200 '{\"rows\":[{\"email\":\"ada@example.com\",\"name\":\"Ada Lovelace\",\"plan\":\"pro\"},{\"email\":\"alan@example.com\",\"name\":\"Alan Turing\",\"plan\":\"free\"}],\"offset\":0,\"total\":2}'; } }"
nginx_conf tls "upstream importer { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$NGT ssl http2;
    ssl_certificate $WORK/cert.pem; ssl_certificate_key $WORK/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_tickets off; ssl_session_cache off;
    # nginx closes a connection after 1,000 requests by default, and h2load
    # does not reconnect: its HTTP/2 figure would be a cap, not a rate.
    keepalive_requests 1000000; http2_max_requests 1000000;
    location / { proxy_pass http://importer; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
for n in upstream tls; do nginx -c "$WORK/$n/nginx.conf" -g 'daemon off;' & PIDS+=($!); done
UPSTREAM_PID=${PIDS[0]}; NGINX_PID=${PIDS[1]}

declare -A PORT PID ADMIN
# start_taphook name plain|shipped
start_taphook() {
  local name=$1 listen admin
  listen=$(port); admin=$(port)
  mkdir -p "$WORK/$name/rules"
  cat >"$WORK/$name/taphook.yaml" <<CONF
listen: 127.0.0.1:$listen
tls: { cert: $WORK/cert.pem, key: $WORK/key.pem }
upstream: http://127.0.0.1:$UP
admin_listen: 127.0.0.1:$admin
rules_dir: rules
data_dir: data
CONF
  if [ "$2" = plain ]; then
    no_routes "$WORK/$name/rules"
  else
    cp rules/oneschema.yaml rules/dromo.yaml rules/flatfile.yaml "$WORK/$name/rules/"
  fi
  (cd "$WORK/$name" && RUST_LOG=warn exec "$BIN" run --config taphook.yaml >taphook.log 2>&1) &
  PIDS+=($!); PORT[$name]=$listen; ADMIN[$name]=$admin
  await_taphook "$name" "$listen" "$admin"
}
start_taphook plain-tls plain
start_taphook taphook-tls shipped
PORT[bare-tls]=$(port)
THREADS=${PROXY_THREADS:-2} "$BARE_BIN" "127.0.0.1:${PORT[bare-tls]}" "127.0.0.1:$UP" "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/bare.log" 2>&1 &
PIDS+=($!); PID[bare-tls]=$!
for _ in $(seq 100); do curl -sk -o /dev/null "https://127.0.0.1:${PORT[bare-tls]}/" && break; sleep 0.1; done
sleep 0.5

where() { # setup: "port pid"
  case $1 in
    nginx-tls) echo "$NGT $NGINX_PID" ;;
    *) echo "${PORT[$1]} ${PID[$1]}" ;;
  esac
}
SETUPS=(nginx-tls bare-tls plain-tls taphook-tls)
RAW=$OUT/tls-raw; rm -rf "$RAW"; mkdir -p "$RAW"
for run in $(seq "$RUNS"); do
  for s in "${SETUPS[@]}"; do
    read -r p pid <<<"$(where "$s")"
    url="https://127.0.0.1:$p$UNTAPPED_PATH"
    before=$(ticks "$pid")
    wrk -t"$WRK_THREADS" -c"$CONNS" -d"${DURATION}s" "$url" >"$RAW/$s-keepalive-$run"
    echo $(( $(ticks "$pid") - before )) >"$RAW/$s-keepalive-$run.cpu"
    before=$(ticks "$pid")
    wrk -t"$WRK_THREADS" -c"$CONNS" -d"${DURATION}s" -H "Connection: close" "$url" >"$RAW/$s-handshake-$run"
    echo $(( $(ticks "$pid") - before )) >"$RAW/$s-handshake-$run.cpu"
    h2load -D "$DURATION" -c "$CONNS" -m 10 -t "$WRK_THREADS" "$url" >"$RAW/$s-h2-$run" 2>&1 || true
  done
done

# Upgrades under load: wrk on taphook-tls (keep-alive and not) while
# `taphook upgrade` replaces the process, UPGRADE_RUNS times (each new
# process is the next one replaced).
p=${PORT[taphook-tls]}
for run in $(seq 1 "$UPGRADE_RUNS"); do
  wrk -t1 -c16 -d10s "https://127.0.0.1:$p$UNTAPPED_PATH" >"$RAW/upgrade-keepalive-$run" &
  W1=$!
  wrk -t1 -c16 -d10s -H "Connection: close" "https://127.0.0.1:$p$UNTAPPED_PATH" >"$RAW/upgrade-close-$run" &
  W2=$!
  sleep 3
  (cd "$WORK/taphook-tls" && "$BIN" upgrade --config taphook.yaml >"$RAW/upgrade-command" 2>&1) || { cat "$RAW/upgrade-command"; exit 1; }
  wait "$W1" "$W2"
done

python3 - "$RAW" "$RUNS" "$UPGRADE_RUNS" "${SETUPS[@]}" >"$OUT/tls.md" <<'PY'
import re, statistics, sys, pathlib
raw, runs, upgrades, setups = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
tick = 100  # USER_HZ
def wrk(path):
    t = path.read_text()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    n = int(re.search(r"(\d+) requests in", t).group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    errs = sum(map(int, errors.groups())) if errors else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    return rps, n, errs, int(non2xx.group(1)) if non2xx else 0
def h2(path):
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", path.read_text())
    return float(m.group(1)) if m else float("nan")
rows = {}
for s in setups:
    ka = [wrk(raw / f"{s}-keepalive-{r}") for r in range(1, runs + 1)]
    hs = [wrk(raw / f"{s}-handshake-{r}") for r in range(1, runs + 1)]
    cpu_ka = [int((raw / f"{s}-keepalive-{r}.cpu").read_text()) / tick / k[1] * 1e6 for r, k in zip(range(1, runs + 1), ka)]
    cpu_hs = [int((raw / f"{s}-handshake-{r}.cpu").read_text()) / tick / k[1] * 1e6 for r, k in zip(range(1, runs + 1), hs)]
    rows[s] = dict(
        ka=statistics.median(k[0] for k in ka), cpu_ka=statistics.median(cpu_ka),
        hs=statistics.median(k[0] for k in hs), cpu_hs=statistics.median(cpu_hs),
        h2=statistics.median(h2(raw / f"{s}-h2-{r}") for r in range(1, runs + 1)),
        errors=sum(k[2] + k[3] for k in ka + hs))
ng, floor = rows["nginx-tls"], rows["bare-tls"]
print("| setup | keep-alive req/s | CPU µs/req | handshakes/s | CPU µs/handshake | HTTP/2 req/s | errors |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for s, r in rows.items():
    print(f"| {s} | {r['ka']:,.0f} | {r['cpu_ka']:.0f} | {r['hs']:,.0f} | {r['cpu_hs']:.0f} | {r['h2']:,.0f} | {r['errors']} |")
t = rows["taphook-tls"]
print()
print(f"- untapped TLS keep-alive requests/s: taphook {t['ka'] / floor['ka']:.2f}× the bare Pingora proxy, {t['ka'] / ng['ka']:.2f}× nginx; taphook with no routes {rows['plain-tls']['ka'] / floor['ka']:.2f}× the bare proxy")
print(f"- handshakes/s: taphook {t['hs'] / ng['hs']:.2f}× nginx, {t['hs'] / floor['hs']:.2f}× the bare Pingora proxy")
print(f"- HTTP/2 requests/s: taphook {t['h2'] / ng['h2']:.2f}× nginx")
def total(kind):
    runs = [wrk(raw / f"upgrade-{kind}-{r}") for r in range(1, upgrades + 1)]
    return [sum(r[i] for r in runs) for i in (1, 2, 3)]
ka, close = total("keepalive"), total("close")
print(f"- {upgrades} upgrades under load (`taphook upgrade` during each of {upgrades}× 10 s of wrk, over TLS): keep-alive {ka[0]:,} requests, {ka[1]} socket errors, {ka[2]} non-2xx; new connection per request {close[0]:,} requests, {close[1]} socket errors, {close[2]} non-2xx")
PY
cat "$OUT/tls.md"
