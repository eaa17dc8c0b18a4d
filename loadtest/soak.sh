#!/usr/bin/env bash
# Soak: ROUNDS rounds of load against one gateway, each with new chairs (a new site
# prefix) and new dashboards (connected for the round, then gone). After WARMUP
# rounds (which fill what is bounded by design: the replay buffer, set to 2,000
# events here, SQLite's page cache, the allocator's arenas) the gateway's resident
# memory, open file descriptors and chair count are taken as the baseline; after the
# last round, once idle chairs have been forgotten (ingest.forget_idle_chair_ms), all
# three must be back: chairs 0, descriptors at the baseline, memory within
# RSS_SLACK_KB of it. Every round must also deliver
# every breach to every dashboard exactly once. Exit 0 when all holds, 1 otherwise.
#
#   loadtest/soak.sh              # 2 + 10 rounds of 30 s: 300 chairs at 2 Hz, 100 dashboards
#   ROUNDS=3 SECS=3s CHAIRS=50 DASHBOARDS=10 FORGET_MS=2000 PROFILE=debug loadtest/soak.sh
#
# The gateway uses a private Mosquitto (tuned for load, on a free port) rather than
# its embedded broker, whose in-memory message log (up to 100 MB) would be counted in
# the gateway's own memory; a temporary audit file; free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-10}
WARMUP=${WARMUP:-2}
SECS=${SECS:-30s}
CHAIRS=${CHAIRS:-300}
RATE=${RATE:-2}
DASHBOARDS=${DASHBOARDS:-100}
FORGET_MS=${FORGET_MS:-5000}
RSS_SLACK_KB=${RSS_SLACK_KB:-8192}
PROFILE=${PROFILE:-release}

if [ "$PROFILE" = release ]; then
  cargo build --release --workspace --bins --quiet
else
  cargo build --workspace --bins --quiet
fi
bin=target/$PROFILE
tmp=$(mktemp -d)
gw=
broker=
cleanup() {
  set +e
  for pid in $gw $broker; do
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  rm -rf "$tmp"
}
trap cleanup EXIT

source loadtest/broker.sh
start_broker "$tmp" || exit 1
start_gateway "$tmp" soak env VITALGATE_INGEST__FORGET_IDLE_CHAIR_MS="$FORGET_MS" \
  VITALGATE_WEBSOCKET__REPLAY_CAPACITY=2000 "$bin/vitalgate" || exit 1

metric() { curl -sf "http://127.0.0.1:$http_port/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
# Poll (0.1 s steps) until a command succeeds, at most $1 seconds.
wait_for() {
  local limit=$1; shift
  for _ in $(seq 1 $((limit * 10))); do "$@" && return 0; sleep 0.1; done
  return 1
}
no_chairs() { [ "$(metric vitalgate_chairs)" = 0 ]; }

alive() {
  kill -0 "$gw" 2>/dev/null || { echo "the gateway has died:"; cat "$tmp/gateway.log"; exit 1; }
}

measure() {
  local rss fds
  rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$gw/status")
  fds=$(ls "/proc/$gw/fd" | wc -l)
  echo "$rss $fds $(metric vitalgate_chairs)"
}

round() {
  "$bin/vitalgate-loadtest" --gateway "127.0.0.1:$http_port" --broker "127.0.0.1:$mqtt_port" \
    --gateway-pid "$gw" --chairs "$CHAIRS" --rate "$RATE" --duration "$SECS" \
    --dashboards "$DASHBOARDS" --site-prefix "r$1s" --breach-every 10s \
    >"$tmp/round-$1.txt" 2>&1 || { cat "$tmp/round-$1.txt"; echo "round $1 failed"; exit 1; }
  grep -E '^breaches' "$tmp/round-$1.txt" | sed "s/^/round $1: /"
}

forget_s=$(( FORGET_MS / 1000 + 10 ))
for w in $(seq 1 "$WARMUP"); do
  echo "warm-up round $w"
  round "w$w"
done
wait_for "$forget_s" no_chairs || { echo "chairs were not forgotten after the warm-up"; exit 1; }
alive
read -r base_rss base_fds _ < <(measure)
echo "baseline: RSS $base_rss kB, $base_fds descriptors, 0 chairs"

peak_rss=$base_rss
for r in $(seq 1 "$ROUNDS"); do
  round "$r"
  alive
  read -r rss fds chairs < <(measure)
  echo "after round $r: RSS $rss kB, $fds descriptors, $chairs chairs"
  [ "$rss" -gt "$peak_rss" ] && peak_rss=$rss
done

wait_for "$forget_s" no_chairs || echo "chairs were not all forgotten in ${forget_s} s"
alive
read -r end_rss end_fds end_chairs < <(measure)
[ "$end_rss" -gt "$peak_rss" ] && peak_rss=$end_rss
echo "end: RSS $end_rss kB (peak $peak_rss kB), $end_fds descriptors, $end_chairs chairs"

fail=0
[ "$end_chairs" = 0 ] || { echo "FAIL: $end_chairs chairs left"; fail=1; }
[ "$end_fds" -le "$base_fds" ] || { echo "FAIL: $end_fds descriptors open, baseline $base_fds"; fail=1; }
[ "$end_rss" -le $(( base_rss + RSS_SLACK_KB )) ] ||
  { echo "FAIL: RSS $end_rss kB, baseline $base_rss kB + $RSS_SLACK_KB kB slack"; fail=1; }
[ "$fail" = 0 ] && echo "OK: chairs, descriptors and memory back to the baseline after $ROUNDS rounds"
exit "$fail"
