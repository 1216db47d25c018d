#!/usr/bin/env bash
# End to end over TCP: the same app unprotected and behind a warm ComposioAuthLayer,
# served on one worker thread pinned to core 0, driven by wrk pinned to core 1.
# Runs alternate (unprotected, protected) ROUNDS times; prints requests/s and p99 of
# each run and the ratio of the medians.
#
#   bash benches/e2e.sh            # 5 rounds of 10 s
#   ROUNDS=9 SECS=20 bash benches/e2e.sh
#   TARGET=actix_load_target bash benches/e2e.sh   # the same in actix-web
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
SECS=${SECS:-10}
CONNECTIONS=${CONNECTIONS:-32}
TARGET=${TARGET:-load_target}

if ! command -v wrk >/dev/null; then
  echo "installing wrk (Debian package)" >&2
  apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --example "$TARGET" >&2

out=$(mktemp)
taskset -c 0 "target/release/examples/$TARGET" >"$out" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$out"' EXIT
until grep -q protected= "$out"; do sleep 0.1; done
read -r line <"$out"
unprotected=$(sed -E 's/.*unprotected=([^ ]+).*/\1/' <<<"$line")
protected=$(sed -E 's/.* protected=([^ ]+).*/\1/' <<<"$line")
key=$(sed -E 's/.*key=([^ ]+).*/\1/' <<<"$line")

# Prints "requests_per_second p99_in_microseconds".
measure() {
  taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${SECS}s" --latency -H "x-api-key: $key" "http://$1/" |
    awk '
      function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return (v+0)*1000; if (v ~ /s$/) return (v+0)*1000000; return v }
      /^ +99%/ { p99 = us($2) }
      /^Requests\/sec/ { rps = $2 }
      /Non-2xx/ { bad = $NF }
      END { if (bad) { print "non-2xx answers: " bad > "/dev/stderr"; exit 1 } print rps, p99 }'
}

# Warm-up, not reported.
SECS=2 measure "$unprotected" >/dev/null
SECS=2 measure "$protected" >/dev/null

echo "| round | unprotected req/s | unprotected p99 | protected req/s | protected p99 |"
echo "|---|---|---|---|---|"
u_all=(); p_all=()
for round in $(seq 1 "$ROUNDS"); do
  read -r u_rps u_p99 < <(measure "$unprotected")
  read -r p_rps p_p99 < <(measure "$protected")
  u_all+=("$u_rps"); p_all+=("$p_rps")
  echo "| $round | $u_rps | ${u_p99} µs | $p_rps | ${p_p99} µs |"
done
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
u_med=$(median "${u_all[@]}")
p_med=$(median "${p_all[@]}")
echo
echo "median req/s: unprotected $u_med, protected $p_med, ratio $(awk -v p="$p_med" -v u="$u_med" 'BEGIN { printf "%.3f", p / u }') (target >= 0.95)"
