#!/usr/bin/env bash
# One load run with the gateway and its broker pinned to one core and the harness to
# the other, to see how much of a latency figure is the two sharing cores.
#
#   loadtest/pinned.sh --chairs 10 --rate 1 --duration 30s --dashboards 1000 --breach-every 10s
#   GATEWAY_CPUS=0 HARNESS_CPUS=1 loadtest/pinned.sh ...   # (the defaults)
#   FLOOR=1 loadtest/pinned.sh --chairs 50 --rate 1 --duration 120s --breach-every 5s
#                       # the floor placed the same way: broker alone on GATEWAY_CPUS
#
# Starts a private Mosquitto (the harness's load settings) and a release gateway
# under `taskset -c $GATEWAY_CPUS`, then runs `vitalgate-loadtest --gateway ...`
# under `taskset -c $HARNESS_CPUS` with the arguments given; its exit status is the
# script's.
set -euo pipefail
cd "$(dirname "$0")/.."
GATEWAY_CPUS=${GATEWAY_CPUS:-0}
HARNESS_CPUS=${HARNESS_CPUS:-1}
# Room for this many chairs, with a write buffer that holds their snapshot (as the
# harness sizes a gateway it starts itself).
MAX_CHAIRS=${MAX_CHAIRS:-4000}
cargo build --release --workspace --bins --quiet
tmp=$(mktemp -d)
gw= broker=
cleanup() {
  set +e
  for pid in $gw $broker; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT
source loadtest/broker.sh
start_broker "$tmp" taskset -c "$GATEWAY_CPUS" || exit 3
if [ "${FLOOR:-0}" = 1 ]; then
  taskset -c "$HARNESS_CPUS" target/release/vitalgate-loadtest \
    --floor --broker "127.0.0.1:$mqtt_port" "$@"
  exit
fi
# A write buffer that holds a snapshot of MAX_CHAIRS chairs, as the harness sets
# for a gateway it starts, capped at the gateway's largest accepted value.
buffer=$((MAX_CHAIRS * (40 * 1200 + 2048) + 1048576))
start_gateway "$tmp" pinned env VITALGATE_INGEST__MAX_CHAIRS="$MAX_CHAIRS" \
  VITALGATE_WEBSOCKET__MAX_WRITE_BUFFER_BYTES=$(( buffer < 268435456 ? buffer : 268435456 )) \
  taskset -c "$GATEWAY_CPUS" target/release/vitalgate || exit 3
taskset -c "$HARNESS_CPUS" target/release/vitalgate-loadtest \
  --gateway "127.0.0.1:$http_port" --broker "127.0.0.1:$mqtt_port" --gateway-pid "$gw" "$@"
