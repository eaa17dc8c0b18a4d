#!/usr/bin/env bash
# Side by side in one run, same publishers and the same private Mosquitto settings:
#   1. the floor: a bare MQTT subscriber that does nothing (vitalgate-loadtest --floor);
#   2. vitalgate, with DASHBOARDS dashboards.
# (The Node-RED flow of the comparison is not built yet.)
#
#   loadtest/compare.sh                         # rates 1000 10000 20000 readings/s, 10 s each
#   RATES="1000 5000" DURATION=30s DASHBOARDS=20 loadtest/compare.sh
#
# Writes one JSON report per run under $OUT and prints a table with the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
RATES=${RATES:-"1000 10000 20000"}
DURATION=${DURATION:-10s}
DASHBOARDS=${DASHBOARDS:-10}
OUT=${OUT:-target/compare}
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || {
  echo "installing mosquitto"; apt-get update -qq && apt-get install -y -qq mosquitto >/dev/null; }

cargo build --release --workspace --quiet
mkdir -p "$OUT"
lt=target/release/vitalgate-loadtest
for rate in $RATES; do
  chairs=$(( rate / 10 ))
  common=(--chairs "$chairs" --rate 10 --duration "$DURATION" --breach-every 20s --broker mosquitto)
  echo "== $rate readings/s: floor"
  "$lt" "${common[@]}" --floor --json "$OUT/floor-$rate.json" >"$OUT/floor-$rate.txt" 2>&1 || true
  echo "== $rate readings/s: vitalgate, $DASHBOARDS dashboards"
  "$lt" "${common[@]}" --dashboards "$DASHBOARDS" --json "$OUT/vitalgate-$rate.json" >"$OUT/vitalgate-$rate.txt" 2>&1 || true
done

python3 - "$OUT" $RATES <<'PY'
import json, sys
out, rates = sys.argv[1], sys.argv[2:]
print()
print(f"{'readings/s':>10} {'who':<10} {'sent/s':>8} {'lost':>5} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'max ms':>8} {'CPU %':>6}   (latency from intended send)")
for rate in rates:
    rows = {}
    for who in ("floor", "vitalgate"):
        try:
            r = json.load(open(f"{out}/{who}-{rate}.json"))
        except (OSError, ValueError):
            print(f"{rate:>10} {who:<10} (no report: see {out}/{who}-{rate}.txt)")
            continue
        l = r["alarm_latency_from_intended"]
        rows[who] = l
        print(f"{rate:>10} {who:<10} {r['achieved_readings_per_s']:>8.0f} {r['breach_deliveries_lost']:>5} "
              f"{l['p50_ms']:>8.3f} {l['p99_ms']:>8.3f} {l['p999_ms']:>9.3f} {l['max_ms']:>8.3f} "
              f"{(r['gateway_cpu_percent'] or 0):>6.0f}")
    if len(rows) == 2 and rows["floor"]["p50_ms"] > 0:
        f, v = rows["floor"], rows["vitalgate"]
        print(f"{'':>10} {'ratio':<10} {'':>8} {'':>5} {v['p50_ms']/f['p50_ms']:>8.2f} "
              f"{v['p99_ms']/max(f['p99_ms'],1e-9):>8.2f} {v['p999_ms']/max(f['p999_ms'],1e-9):>9.2f}")
print("\nCPU % is the broker's for the floor and the gateway's for vitalgate (of one core).")
PY
