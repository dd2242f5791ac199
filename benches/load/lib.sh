# Helpers the load harnesses share (sourced by run.sh and efficiency.sh;
# both set $WORK first).

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

# CPU ticks (user + system) of a process and its children (nginx workers).
ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
