#!/usr/bin/env bash
# Destinations harness (issue 28): events/s taphook delivers to NATS
# JetStream, RabbitMQ and Redis Streams, against each broker's own ceiling
# for the same messages and against an HTTP webhook, in one run.
#
# For each kind (http, nats, amqp, redis), a fresh taphook with one webhook
# to it:
#   1 load    wrk creates embed sessions through taphook for LOAD_S s (one
#             event each), delivered as they come; then every one delivered;
#   2 drain   `taphook replay --include-delivered` puts all N back in the
#             outbox at once: the time from the first redelivery to the
#             last is the drain, N over it taphook's events/s, and its CPU
#             over N the CPU per event;
#   3 ceiling the broker's own ceiling for N such messages: a plain client
#             loop (benches/broker_ceiling.rs: the same crate, headers,
#             acknowledgement and concurrency as taphook's attempts); for
#             HTTP, wrk POSTing an event-sized body to the receiver with
#             as many connections.
# The importer and the HTTP receiver are nginx; nats-server (JetStream, file
# store), rabbitmq-server (durable queue, persistent messages) and
# redis-server (no persistence) run on loopback with stores in a temporary
# directory. Everything on 127.0.0.1.
#
# Usage: benches/load/destinations.sh   (make bench runs it)
#   LOAD_S=10 CONNS=32 CONCURRENCY=16 KINDS="http nats amqp redis"
#   BIN=path   the binary (default: cargo build --release)
# Writes target/bench/destinations.md and target/bench/destinations.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
LOAD_S=${LOAD_S:-10}
CONNS=${CONNS:-32}
CONCURRENCY=${CONCURRENCY:-16}
KINDS=${KINDS:-http nats amqp redis}
for tool in wrk nginx nats-server redis-server rabbitmq-server; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] ||
    { echo "installing $tool"; ${SUDO:-} apt-get update -qq && ${SUDO:-} apt-get install -y -qq "$tool" >/dev/null; }
done
if [ -z "${BIN:-}" ]; then cargo build --release --quiet; BIN=$PWD/target/release/taphook; fi
cargo bench --quiet --bench broker_ceiling --no-run 2>/dev/null
ceiling() { cargo bench --quiet --bench broker_ceiling 2>/dev/null; }
OUT=$PWD/target/bench
mkdir -p "$OUT"
RAWDIR=$OUT/destinations
rm -rf "$RAWDIR"; mkdir -p "$RAWDIR"
WORK=$(mktemp -d)
. benches/load/lib.sh
PIDS=()
EPMD=$(port)
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  pkill -9 -f "epmd_port $EPMD" 2>/dev/null || true
  for p in $(ss -ltnpH "sport = :$EPMD" | grep -oP 'pid=\K[0-9]+'); do kill -9 "$p" 2>/dev/null || true; done
  sleep 0.2; rm -rf "$WORK"
}
trap cleanup EXIT
wait_port() { # port what
  for _ in $(seq 600); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done
  echo "$2 did not start" >&2; exit 1
}

# The importer (a fresh session id per embed) and the HTTP receiver.
UP=$(port); SINK=$(port)
importer_conf "$UP"
nginx_conf sink "server { listen 127.0.0.1:$SINK; location /hooks { return 200; } }"
nginx -c "$WORK/importer/nginx.conf" -g 'daemon off;' & PIDS+=($!)
nginx -c "$WORK/sink/nginx.conf" -g 'daemon off;' & PIDS+=($!)

# The brokers.
NATS=$(port); REDIS=$(port); RABBIT=$(port)
nats-server -js -a 127.0.0.1 -p "$NATS" -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 & PIDS+=($!)
redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 & PIDS+=($!)
mkdir -p "$WORK/rabbit"; echo "[]." >"$WORK/rabbit/plugins"
printf 'listeners.tcp.default = 127.0.0.1:%s\nloopback_users = none\n' "$RABBIT" >"$WORK/rabbit/rabbitmq.conf"
RABBITMQ_NODE_PORT=$RABBIT RABBITMQ_NODENAME="bench$RABBIT@localhost" \
  RABBITMQ_MNESIA_BASE=$WORK/rabbit/mnesia RABBITMQ_LOG_BASE=$WORK/rabbit/log \
  RABBITMQ_DIST_PORT=$(port) ERL_EPMD_PORT=$EPMD RABBITMQ_ENABLED_PLUGINS_FILE=$WORK/rabbit/plugins \
  RABBITMQ_CONFIG_FILE=$WORK/rabbit/rabbitmq HOME=$WORK/rabbit \
  /usr/lib/rabbitmq/bin/rabbitmq-server >"$WORK/rabbit.log" 2>&1 & PIDS+=($!)
wait_port "$NATS" nats-server; wait_port "$REDIS" redis-server; wait_port "$RABBIT" rabbitmq-server
wait_port "$SINK" nginx; wait_port "$UP" nginx

broker_url() { # kind: what the ceiling loop connects to
  case $1 in
    nats) echo "nats://127.0.0.1:$NATS" ;;
    amqp) echo "amqp://guest:guest@127.0.0.1:$RABBIT/%2f" ;;
    redis) echo "redis://127.0.0.1:$REDIS/0" ;;
  esac
}
webhook_url() { # kind: the webhook's url
  case $1 in
    http) echo "http://127.0.0.1:$SINK/hooks" ;;
    nats) echo "nats://127.0.0.1:$NATS/importer.{event_type}" ;;
    amqp) echo "amqp://guest:guest@127.0.0.1:$RABBIT/%2f?exchange=importer&routing_key=importer.{event_type}" ;;
    redis) echo "redis://127.0.0.1:$REDIS/0?stream=importer-events" ;;
  esac
}
# The stream, and the exchange and queue, before the first event.
for k in nats amqp; do KIND=$k URL=$(broker_url $k) SETUP=1 ceiling; done

delivered() { metric taphook_deliveries_total "$ADMIN" 'outcome="delivered"'; }
accepted() { metric taphook_outbox_accepted_total "$ADMIN"; }
now() { date +%s.%N; }

measure() { # kind
  local kind=$1 dir=$WORK/taphook-$1 n t0 t1 c0 c1 rate
  mkdir -p "$dir/rules"
  TP=$(port); ADMIN=$(port)
  cat >"$dir/taphook.yaml" <<CONF
listen: 127.0.0.1:$TP
upstream: http://127.0.0.1:$UP
admin_listen: 127.0.0.1:$ADMIN
rules_dir: rules
data_dir: data
delivery:
  allow_private_networks: [127.0.0.0/8]
  concurrency_per_webhook: $CONCURRENCY
CONF
  cat >"$dir/rules/bench.yaml" <<RULES
routes:
  - name: create-embed
    event: embed_initialized
    method: POST
    path: /v1/embeds
    session: \$response.body.id
webhooks:
  - key: bench
    url: $(webhook_url "$kind")
    events: ["*"]
RULES
  (cd "$dir" && RUST_LOG=warn exec "$BIN" run --config taphook.yaml >taphook.log 2>&1) & PIDS+=($!)
  local tpid=$!
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null && break; sleep 0.1; done
  echo "== $kind: $(webhook_url "$kind")" >&2

  # 1: load, every event delivered.
  wrk -t1 -c"$CONNS" -d"${LOAD_S}s" -s benches/load/post.lua "http://127.0.0.1:$TP/v1/embeds" >"$RAWDIR/wrk-load-$kind.txt"
  drained "$ADMIN" >/dev/null
  n=$(delivered)
  [ "$n" -ge "$(accepted)" ] || { echo "$kind: $n of $(accepted) delivered" >&2; tail "$dir/taphook.log" >&2; exit 1; }

  # 2: all of them again, from the outbox.
  (cd "$dir" && "$BIN" replay --config taphook.yaml --webhook bench --include-delivered) >"$RAWDIR/replay-$kind.txt" 2>&1
  for _ in $(seq 2000); do [ "$(delivered)" -gt "$n" ] && break; sleep 0.01; done
  t0=$(now); c0=$(ticks "$tpid")
  for _ in $(seq 60000); do [ "$(delivered)" -ge $((2 * n)) ] && break; sleep 0.02; done
  t1=$(now); c1=$(ticks "$tpid")
  [ "$(delivered)" -ge $((2 * n)) ] || { echo "$kind: the replay did not drain" >&2; exit 1; }
  kill "$tpid"; wait "$tpid" 2>/dev/null || true

  # 3: the ceiling for as many messages, as many at once.
  if [ "$kind" = http ]; then
    wrk -t1 -c"$CONCURRENCY" -d10s -s benches/load/event.lua "http://127.0.0.1:$SINK/hooks" >"$RAWDIR/wrk-ceiling-http.txt"
    rate=$(awk '/Requests\/sec/ {print $2}' "$RAWDIR/wrk-ceiling-http.txt")
  else
    KIND=$kind URL=$(broker_url "$kind") N=$n CONCURRENCY=$CONCURRENCY ceiling >"$RAWDIR/ceiling-$kind.txt"
    rate=$(awk '{print $4}' "$RAWDIR/ceiling-$kind.txt")
  fi
  python3 - "$kind" "$n" "$t0" "$t1" "$c0" "$c1" "$rate" "$(getconf CLK_TCK)" >>"$RAWDIR/results.jsonl" <<'PY'
import json, sys
kind, n, t0, t1, c0, c1, ceiling, hz = sys.argv[1:]
n, secs, ticks = int(n), float(t1) - float(t0), int(c1) - int(c0)
print(json.dumps({"kind": kind, "events": n, "drain_s": round(secs, 3),
    "events_per_s": round(n / secs), "cpu_us_per_event": round(ticks / int(hz) / n * 1e6, 1),
    "ceiling_per_s": round(float(ceiling))}))
PY
  tail -1 "$RAWDIR/results.jsonl" >&2
}

for kind in $KINDS; do measure "$kind"; done

python3 - "$RAWDIR/results.jsonl" "$OUT/destinations.md" "$OUT/destinations.json" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
http = next((r for r in rows if r["kind"] == "http"), None)
lines = ["| destination | events | taphook events/s | broker's own ceiling /s | taphook / ceiling | against the HTTP webhook | taphook CPU per event |",
         "| --- | --- | --- | --- | --- | --- | --- |"]
for r in rows:
    vs_http = f'{r["events_per_s"] / http["events_per_s"]:.2f}×' if http else "n/a"
    lines.append(f'| {r["kind"]} | {r["events"]:,} | {r["events_per_s"]:,} | {r["ceiling_per_s"]:,} | '
                 f'{r["events_per_s"] / r["ceiling_per_s"]:.2f}× | {vs_http} | {r["cpu_us_per_event"]} µs |')
text = "\n".join(lines) + "\n"
open(sys.argv[2], "w").write(text)
json.dump(rows, open(sys.argv[3], "w"), indent=2)
print(text)
PY
