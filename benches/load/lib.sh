# Helpers the load harnesses share (sourced by run.sh, efficiency.sh, tls.sh and traces.sh;
# each sets $WORK first; efficiency.sh has a metric() of its own).

# A free loopback port.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# $WORK/<name>/nginx.conf with one http block's contents, its files under
# $WORK/<name>; each nginx has its own so each one's CPU time is its own.
nginx_conf() { # name, server block
  mkdir -p "$WORK/$1"
  cat >"$WORK/$1/nginx.conf" <<NGINX
worker_processes auto;
pid $WORK/$1/nginx.pid;
error_log $WORK/$1/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/$1/body; proxy_temp_path $WORK/$1/proxy;
  fastcgi_temp_path $WORK/$1/fcgi; uwsgi_temp_path $WORK/$1/uwsgi; scgi_temp_path $WORK/$1/scgi;
  $2
}
NGINX
}

# importer_conf port: nginx as the importer, a fresh session id per
# `POST /v1/embeds` (one event each through the shipped route); anything
# else answered 200 and untapped.
importer_conf() {
  nginx_conf importer "server { listen 127.0.0.1:$1;
    location /v1/embeds { default_type application/json; return 200 '{\"id\":\"\$request_id\",\"status\":\"initialized\"}'; }
    location / { default_type application/json; return 200 '{\"ok\":true}'; } }"
}

# await_taphook name listen admin: waits (at most 2 minutes) until taphook
# $name is ready, then sets PID[$name] to the process that listens (under
# a wrapper, its child); if it does not start, prints its log and exits.
# The caller declares `declare -A PID`.
await_taphook() {
  local name=$1 listen=$2 admin=$3
  for _ in $(seq 1200); do
    if curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null; then
      PID[$name]=$(ss -ltnpH "sport = :$listen" | grep -oP 'pid=\K[0-9]+' | head -1)
      return
    fi
    sleep 0.1
  done
  echo "taphook $name did not start:"; cat "$WORK/$name/taphook.log"; exit 1
}

# no_routes dir: a rules directory whose one route matches nothing.
no_routes() {
  printf 'routes:\n  - name: none\n    event: none\n    path: /nothing-here\n' >"$1/none.yaml"
}

# CPU ticks (user + system) of a process and its children (nginx workers).
ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

# metric name admin_port [label filter]: the sum of a metric's series.
metric() {
  curl -s "http://127.0.0.1:$2/metrics" | awk -v m="$1" -v f="${3:-}" \
    'index($0, m) == 1 && (f == "" || index($0, f) > 0) {s += $NF} END {printf "%d\n", s}'
}
# drained admin_port: waits until every derived event is delivered (at
# most 10 minutes); prints the seconds it took.
drained() {
  local start derived
  start=$(date +%s.%N)
  for _ in $(seq 2400); do
    derived=$(metric taphook_outbox_accepted_total "$1")
    [ "$(metric taphook_deliveries_total "$1" 'outcome="delivered"')" -ge "$derived" ] && break
    sleep 0.25
  done
  python3 -c "import time; print(round(time.time() - $start, 2))"
}
