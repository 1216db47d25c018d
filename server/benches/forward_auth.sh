#!/usr/bin/env bash
# Forward auth through nginx (1 worker), wrk alternating three targets in one run:
#   (a) nginx serving a static file, no auth;
#   (b) the same behind auth_request -> proxy_pass to another nginx server block
#       that returns 200 (the floor of any external auth subrequest);
#   (c) the same behind auth_request -> composio-auth-server /verify, warm.
# Then the server alone (/verify, warm). nginx is pinned to core 0, wrk
# runs on core 1; the server floats on both (SERVER_CPUS=0 pins it beside nginx).
# Prints each run and the ratios of the medians.
#
#   bash server/benches/forward_auth.sh          # 5 rounds of 10 s
#   ROUNDS=3 SECS=5 bash server/benches/forward_auth.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-5}
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
server_port=$(free_port); a=$(free_port); b=$(free_port); c=$(free_port); floor=$(free_port)
key=ak_demo_alice_0123456789   # one of --demo's keys

SERVER_CPUS=${SERVER_CPUS:-0-1}
# Tokio's worker threads (its default: one per core).
export TOKIO_WORKER_THREADS=${TOKIO_WORKER_THREADS:-2}
taskset -c "$SERVER_CPUS" target/release/composio-auth-server --demo --listen "127.0.0.1:$server_port" >"$dir/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; [ -f "$dir/nginx.pid" ] && kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true; rm -rf "$dir"' EXIT
until grep -q "listening on" "$dir/server.log"; do sleep 0.1; done

mkdir -p "$dir/www" && echo ok >"$dir/www/index.html"
chmod 755 "$dir" "$dir/www" && chmod 644 "$dir/www/index.html"   # nginx's workers read it
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
  server { listen 127.0.0.1:$a; root $dir/www; }
  server { listen 127.0.0.1:$b; root $dir/www; auth_request /_auth;
           location = /_auth { $subrequest proxy_pass http://floor/; } }
  server { listen 127.0.0.1:$c; root $dir/www; auth_request /_auth;
           location = /_auth { $subrequest proxy_pass http://composio_auth/verify; } }
  server { listen 127.0.0.1:$floor; location / { return 200; } }
}
CONF
taskset -c 0 "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
deadline=$((SECONDS + 30))
until curl --noproxy '*' -sf -o /dev/null "http://127.0.0.1:$c/" -H "x-api-key: $key"; do
  [ $SECONDS -lt $deadline ] || { echo "nginx never answered 200; its log:" >&2; cat "$dir/error.log" >&2; exit 1; }
  sleep 0.1
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

for t in a b c; do SECS=2 measure "http://127.0.0.1:${!t}/" >/dev/null; done
echo "| round | (a) static req/s, p99 | (b) auth floor req/s, p99 | (c) composio-auth-server req/s, p99 |"
echo "|---|---|---|---|"
declare -A rps p99
for round in $(seq 1 "$ROUNDS"); do
  line="| $round"
  for t in a b c; do
    read -r r _ q < <(measure "http://127.0.0.1:${!t}/")
    rps[$t]+="$r "; p99[$t]+="$q "
    line+=" | $r, ${q} µs"
  done
  echo "$line |"
done
for t in a b c; do
  eval "m_rps_$t=$(median ${rps[$t]})"; eval "m_p99_$t=$(median ${p99[$t]})"
done
echo
echo "medians: (a) $m_rps_a req/s p99 $m_p99_a µs; (b) $m_rps_b req/s p99 $m_p99_b µs; (c) $m_rps_c req/s p99 $m_p99_c µs"
awk -v c="$m_rps_c" -v b="$m_rps_b" -v pc="$m_p99_c" -v pb="$m_p99_b" \
  'BEGIN { printf "(c)/(b): %.3f req/s (target >= 1.05), p99 %.2fx (target <= 1.3)\n", c / b, pc / pb }'

echo
echo "the server alone, /verify warm, on cores $SERVER_CPUS (wrk on core 1):"
all=()
for round in $(seq 1 "$ROUNDS"); do
  read -r r p50 q < <(measure "http://127.0.0.1:$server_port/verify")
  echo "  round $round: $r req/s, p50 ${p50} µs, p99 ${q} µs"
  all+=("$r")
done
echo "  median $(median "${all[@]}") req/s"
