#!/usr/bin/env bash
# Forward auth through nginx (1 worker), wrk alternating four targets in one run:
#   (a) nginx serving a static file, no auth;
#   (b) the same behind auth_request -> proxy_pass to another nginx server block
#       that returns 200 (the floor of any external auth subrequest);
#   (c) the same behind auth_request -> composio-auth-server /verify over TCP, warm;
#   (d) the same over a unix socket (`server unix:...` in the upstream), to a
#       second server process (`--listen unix:... --socket-mode 666`), warm.
# Then the server alone (/verify over TCP, warm, moved to core 0 where nginx then
# idles). nginx is pinned to core 0, wrk runs on core 1, and so do the servers, one
# Tokio worker each: nginx keeps its core to itself, as beside a sidecar that has a
# core of its own (SERVER_CPUS=0-1 TOKIO_WORKER_THREADS=2 lets them float on both,
# where a server's second worker takes turns on nginx's core: p99 suffers).
# Prints each round, each target's medians with their spread (min-max), and the
# ratios of the medians to the floor (b).
#
#   bash server/benches/forward_auth.sh          # 3 rounds of 10 s
#   ROUNDS=5 SECS=5 bash server/benches/forward_auth.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-10}
CONNECTIONS=${CONNECTIONS:-32}
for tool in wrk nginx; do
  if ! command -v $tool >/dev/null && [ ! -x /usr/sbin/$tool ]; then
    echo "installing $tool (Debian package)" >&2
    apt-get update -qq && apt-get install -y -qq $tool >/dev/null
  fi
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
cargo build --release -p composio-auth-server >&2

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
dir=$(mktemp -d)
server_port=$(free_port); a=$(free_port); b=$(free_port); c=$(free_port); d=$(free_port); floor=$(free_port)
socket=$dir/auth.sock
key=ak_demo_alice_0123456789   # one of --demo's keys

SERVER_CPUS=${SERVER_CPUS:-1}
# Tokio's worker threads (its default: one per core).
export TOKIO_WORKER_THREADS=${TOKIO_WORKER_THREADS:-1}
servers=()
trap 'kill ${servers[*]} 2>/dev/null || true; [ -f "$dir/nginx.pid" ] && kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true; rm -rf "$dir"' EXIT
# start_server NAME FLAGS...: a --demo server, once it says where it listens.
start_server() {
  local name=$1; shift
  taskset -c "$SERVER_CPUS" target/release/composio-auth-server --demo "$@" >"$dir/$name.log" 2>&1 &
  servers+=($!)
  until grep -q "listening on" "$dir/$name.log"; do
    kill -0 "${servers[-1]}" 2>/dev/null || { echo "the $name server exited:" >&2; cat "$dir/$name.log" >&2; exit 1; }
    sleep 0.1
  done
}
start_server server --listen "127.0.0.1:$server_port"
# 666: nginx's workers (`nobody` under a root master) connect to it.
start_server server-unix --listen "unix:$socket" --socket-mode 666

mkdir -p "$dir/www" && echo ok >"$dir/www/index.html"
# nginx's workers read the file and reach the socket.
chmod 755 "$dir" "$dir/www" && chmod 644 "$dir/www/index.html"
subrequest='internal; proxy_pass_request_body off; proxy_set_header Content-Length ""; proxy_http_version 1.1; proxy_set_header Connection "";'
cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/body; proxy_temp_path $dir/proxy; fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
  upstream floor { server 127.0.0.1:$floor; keepalive 64; }
  upstream composio_auth { server 127.0.0.1:$server_port; keepalive 64; }
  upstream composio_auth_unix { server unix:$socket; keepalive 64; }
  server { listen 127.0.0.1:$a; root $dir/www; }
  server { listen 127.0.0.1:$b; root $dir/www; auth_request /_auth;
           location = /_auth { $subrequest proxy_pass http://floor/; } }
  server { listen 127.0.0.1:$c; root $dir/www; auth_request /_auth;
           location = /_auth { $subrequest proxy_pass http://composio_auth/verify; } }
  server { listen 127.0.0.1:$d; root $dir/www; auth_request /_auth;
           location = /_auth { $subrequest proxy_pass http://composio_auth_unix/verify; } }
  server { listen 127.0.0.1:$floor; location / { return 200; } }
}
CONF
taskset -c 0 "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
deadline=$((SECONDS + 30))
for t in c d; do
  until curl --noproxy '*' -sf -o /dev/null "http://127.0.0.1:${!t}/" -H "x-api-key: $key"; do
    [ $SECONDS -lt $deadline ] || { echo "nginx never answered 200 on ($t); its log:" >&2; cat "$dir/error.log" >&2; exit 1; }
    sleep 0.1
  done
done

# Prints "requests_per_second p50_us p99_us".
measure() {
  taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${SECS}s" --latency -H "x-api-key: $key" "$1" |
    awk '
      function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return (v+0)*1000; if (v ~ /s$/) return (v+0)*1000000; return v }
      /^ +50%/ { p50 = us($2) }
      /^ +99%/ { p99 = us($2) }
      /^Requests\/sec/ { rps = $2 }
      /Non-2xx/ { bad = $NF }
      END { if (bad) { print "non-2xx answers: " bad > "/dev/stderr"; exit 1 } print rps, p50, p99 }'
}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
spread() { printf '%s\n' "$@" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "-" hi }'; }
ratio() { awk -v x="$1" -v y="$2" 'BEGIN { printf "%.3f", x / y }'; }

targets=(a b c d)
declare -A name=([a]="static" [b]="auth floor" [c]="composio-auth-server, TCP" [d]="composio-auth-server, unix socket")
for t in "${targets[@]}"; do SECS=2 measure "http://127.0.0.1:${!t}/" >/dev/null; done
echo "| round | (a) ${name[a]} req/s, p99 | (b) ${name[b]} req/s, p99 | (c) ${name[c]} req/s, p99 | (d) ${name[d]} req/s, p99 |"
echo "|---|---|---|---|---|"
declare -A rps p99
for round in $(seq 1 "$ROUNDS"); do
  line="| $round"
  for t in "${targets[@]}"; do
    read -r r _ q < <(measure "http://127.0.0.1:${!t}/")
    rps[$t]+="$r "; p99[$t]+="$q "
    line+=" | $r, ${q} µs"
  done
  echo "$line |"
done
declare -A m_rps m_p99
echo
echo "| target | req/s, median (min-max) | p99 µs, median (min-max) |"
echo "|---|---|---|"
for t in "${targets[@]}"; do
  # Unquoted: each list is words.
  m_rps[$t]=$(median ${rps[$t]}); m_p99[$t]=$(median ${p99[$t]})
  echo "| ($t) ${name[$t]} | ${m_rps[$t]} ($(spread ${rps[$t]})) | ${m_p99[$t]} ($(spread ${p99[$t]})) |"
done
echo
echo "(c)/(b), TCP:         req/s $(ratio "${m_rps[c]}" "${m_rps[b]}") (target >= 1.05), p99 $(ratio "${m_p99[c]}" "${m_p99[b]}")x (target <= 1.3)"
echo "(d)/(b), unix socket: req/s $(ratio "${m_rps[d]}" "${m_rps[b]}") (target >= 1.2), p99 $(ratio "${m_p99[d]}" "${m_p99[b]}")x (target <= 1.0)"

echo
echo "the server alone, /verify warm, on core 0 (wrk on core 1):"
taskset -a -p -c 0 "${servers[0]}" >/dev/null
all=()
for round in $(seq 1 "$ROUNDS"); do
  read -r r p50 q < <(measure "http://127.0.0.1:$server_port/verify")
  echo "  round $round: $r req/s, p50 ${p50} µs, p99 ${q} µs"
  all+=("$r")
done
echo "  median $(median "${all[@]}") req/s"
