#!/usr/bin/env bash
# A gateway for the load harness that leaves its own figures behind: run as
# `--vitalgate-bin`, it starts $GATEWAY_BIN (default target/release/vitalgate) with
# the harness's arguments and, when the harness stops it (SIGTERM), first saves the
# gateway's /metrics to $METRICS_OUT.metrics and each of its threads' CPU ticks
# (user, system) and context switches (voluntary, not) to $METRICS_OUT.threads.
#
#   METRICS_OUT=target/m/vg-1 target/release/vitalgate-loadtest --chairs 1000 --rate 10 \
#     --duration 20s --drain 5s --breach-every 20s --broker mosquitto --dashboards 10 \
#     --vitalgate-bin loadtest/metrics-at-exit.sh --json target/m/vg-1.json
#   # then e.g.: grep ingest_to_ws_send_seconds target/m/vg-1.metrics
#
# The harness then measures the CPU of this script, not the gateway's: read the
# threads file instead.
set -u
bin=${GATEWAY_BIN:-$(dirname "$0")/../target/release/vitalgate}
out=${METRICS_OUT:?set METRICS_OUT to a path prefix for the saved figures}
mkdir -p "$(dirname "$out")"
"$bin" "$@" &
pid=$!
save() {
  curl -s "http://$VITALGATE_HTTP__BIND/metrics" >"$out.metrics"
  for t in /proc/$pid/task/*; do
    printf '%s %s %s\n' "$(cat "$t/comm")" "$(sed 's/.*) //' "$t/stat" | cut -d' ' -f12,13)" \
      "$(awk '/^(non)?voluntary_ctxt_switches/ {printf "%s ", $2}' "$t/status")"
  done >"$out.threads"
  kill -TERM "$pid"
}
trap save TERM INT
wait "$pid"
wait "$pid"
