#!/usr/bin/env bash
# End to end over TCP: the same app unprotected and behind a warm ComposioAuthLayer,
# served on one worker thread pinned to core 0, driven by wrk pinned to core 1.
#
# A run is ROUNDS rounds; a round measures both apps for SECS seconds each, in ABBA
# order (unprotected first in odd rounds, protected first in even ones), so that the
# machine's drift over a run weighs on both alike. A run's figure is the ratio of
# the medians of its rounds' requests/s (protected / unprotected). RUNS runs; the
# result is the median of their figures, with the spread (lowest-highest).
#
#   bash benches/e2e.sh                       # 3 runs of 10 rounds of 2 s
#   RUNS=5 ROUNDS=20 SECS=2 bash benches/e2e.sh
#   FORM=per_route bash benches/e2e.sh       # the layer added with Router::layer
#   TARGET=actix_load_target bash benches/e2e.sh   # the same in actix-web
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
ROUNDS=${ROUNDS:-10}
SECS=${SECS:-2}
CONNECTIONS=${CONNECTIONS:-32}
TARGET=${TARGET:-load_target}
# Which protected server: "protected" (the README's: around the whole axum router;
# actix-web's wrap) or "per_route" (axum only: added with Router::layer).
FORM=${FORM:-protected}

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
protected=$(sed -E "s/.* $FORM=([^ ]+).*/\\1/" <<<"$line")
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
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
ratio() { awk -v p="$1" -v u="$2" 'BEGIN { printf "%.3f", p / u }'; }

# Warm-up, not reported.
SECS=2 measure "$unprotected" >/dev/null
SECS=2 measure "$protected" >/dev/null

echo "| run | unprotected req/s (median) | protected req/s (median) | ratio | rounds' ratios, lowest-highest |"
echo "|---|---|---|---|---|"
figures=()
for run in $(seq 1 "$RUNS"); do
  u_all=(); p_all=(); pairs=()
  for round in $(seq 1 "$ROUNDS"); do
    if ((round % 2)); then
      read -r u_rps _ < <(measure "$unprotected")
      read -r p_rps _ < <(measure "$protected")
    else
      read -r p_rps _ < <(measure "$protected")
      read -r u_rps _ < <(measure "$unprotected")
    fi
    u_all+=("$u_rps"); p_all+=("$p_rps"); pairs+=("$(ratio "$p_rps" "$u_rps")")
  done
  u_med=$(median "${u_all[@]}"); p_med=$(median "${p_all[@]}")
  figure=$(ratio "$p_med" "$u_med")
  figures+=("$figure")
  spread=$(printf '%s\n' "${pairs[@]}" | sort -g | sed -n '1p;$p' | paste -sd-)
  echo "| $run | $u_med | $p_med | $figure | $spread |"
done
echo
lowest=$(printf '%s\n' "${figures[@]}" | sort -g | head -1)
highest=$(printf '%s\n' "${figures[@]}" | sort -g | tail -1)
echo "ratio, median of $RUNS runs: $(median "${figures[@]}") (runs $lowest-$highest; target >= 0.97)"
