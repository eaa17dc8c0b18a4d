#!/usr/bin/env bash
# Side by side in one run, same publishers and the same private Mosquitto settings:
#   1. the floor: a bare MQTT subscriber that does nothing (vitalgate-loadtest --floor);
#   2. Node-RED: the flow a clinic's integrator would build (loadtest/nodered/flows.json):
#      `mqtt in` (clinic/+/chair/+/vitals, QoS 1, clean session, a fresh client id) →
#      `function` (the shipped sbp_warn and sbp_critical limits, hysteresis 5 mmHg,
#      once per episode per chair and rule, cleared when back inside) →
#      `websocket out` (/ws, vitalgate's `alarm` frames), with DASHBOARDS dashboards;
#   3. vitalgate, with DASHBOARDS dashboards;
#   fanout (not run unless named in CONTENDERS): the fan-out floor,
#      vitalgate-fanout-floor (loadtest/src/bin/fanout_floor.rs), the least a gateway
#      on vitalgate's stack (tokio, rumqttc, tungstenite) can do between the broker
#      and DASHBOARDS dashboards: the SBP rules as `alarm` frames, serialised once,
#      a queue and a writer task per dashboard. What vitalgate adds to it is its own.
#      FANOUT_ARGS=--direct: the floor writes every socket from the task that takes
#      the readings instead (no queue or task per dashboard).
#   cluster1, cluster2, cluster3 (not run unless named in CONTENDERS): vitalgate in
#      cluster mode, `vitalgate-loadtest --cluster N`: a 3-node NATS cluster (JetStream,
#      replicas 3, MQTT listeners; NATS_SERVER or nats-server 2.10+ on the PATH) and N
#      gateways, publishers spread over the nodes, dashboards over the gateways. CPU is
#      the gateways' together, NATS's in its own column: the cost of replication
#      beside single-node vitalgate.
#   baseline (not run unless named in CONTENDERS): another vitalgate binary,
#      BASELINE_BIN (e.g. a build of an earlier commit), run exactly as vitalgate is:
#      a change measured against the code before it, in the same run.
#
# Readings come from RATE / CHAIR_RATE chairs at CHAIR_RATE readings/s each (default
# 10), each chair surging once per BREACH_EVERY on average (default 20s).
#
#   loadtest/compare.sh                         # rates 1000 10000 20000 readings/s, 10 s each
#   RATES="1000 5000" DURATION=30s DASHBOARDS=20 loadtest/compare.sh
#   CONTENDERS="floor vitalgate" loadtest/compare.sh     # without Node-RED
#   CONTENDERS="fanout vitalgate" RATES=10000 DASHBOARDS=1000 BREACH_EVERY=300s loadtest/compare.sh
#   CONTENDERS="vitalgate cluster1 cluster2 cluster3" RATES="1000 2000" loadtest/compare.sh
#   REPORT_ONLY=1 MAX_P99_MS=100 RATES="..." loadtest/compare.sh  # re-judge saved runs
#
# Writes one JSON report per run under $OUT (floor-R.json, nodered-R.json,
# fanout-R.json with the floor's FANOUT_ARGS in fanout-R.args, vitalgate-R.json, the
# harness's output beside each as .txt) and prints a table with the ratios of
# vitalgate to each other contender.
#
# Node-RED (node-red@$NODE_RED_VERSION, an exact version) is installed from npm into
# target/node-red the first time (again only if the version changes). Each Node-RED
# run starts its own Mosquitto (the settings of loadtest/broker.sh, the harness's
# private one's) and its own Node-RED (a temp userDir,
# loadtest/nodered/settings.js: no editor, no admin API) on free ports, waits until
# the broker has its subscription, then runs the harness with --gateway
# --ready-on-connect (Node-RED sends no snapshot) and --gateway-pid (Node-RED's CPU
# and memory). Node-RED logs to $OUT/nodered-R.log, its broker to
# $OUT/nodered-R.mosquitto.log. Both are stopped after the run, and on failure or
# Ctrl-C (trap). Every harness run is bounded by `timeout`, so a contender that falls
# over shows as lost deliveries or a failed run, not as a hang.
#
# Sustainable rate: per contender, the highest rate in RATES such that its run at
# that rate and at every lower rate in RATES kept up, where a run keeps up when:
#   - it wrote a report and measured at least one breach;
#   - it lost nothing: no breach delivery missing or duplicated, no dashboard
#     (subscriber) failed, every reading acknowledged by the broker;
#   - the generator achieved >= 99 % of the target rate (otherwise the rate was not
#     really offered);
#   - the alarm p99 from the intended send is <= MAX_P99_MS (default 1000 ms). A
#     contender that cannot keep up queues readings and its latency grows through
#     the whole run, far past a second; one that keeps up stays at tens of ms, so
#     1 s separates the two without judging normal jitter on this shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."
RATES=${RATES:-"1000 10000 20000"}
DURATION=${DURATION:-10s}
DRAIN=${DRAIN:-5s}
DASHBOARDS=${DASHBOARDS:-10}
OUT=${OUT:-target/compare}
CONTENDERS=${CONTENDERS:-"floor nodered vitalgate"}
CHAIR_RATE=${CHAIR_RATE:-10}
BREACH_EVERY=${BREACH_EVERY:-20s}
MAX_P99_MS=${MAX_P99_MS:-1000}
NODE_RED_VERSION=${NODE_RED_VERSION:-4.1.15}
NODE_RED_DIR=target/node-red
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || {
  echo "installing mosquitto"; apt-get update -qq && apt-get install -y -qq mosquitto >/dev/null; }
source loadtest/broker.sh

# REPORT_ONLY=1: print the table again from the reports already in $OUT (e.g. with
# another MAX_P99_MS) without running anything.
REPORT_ONLY=${REPORT_ONLY:-0}
[ "$REPORT_ONLY" = 1 ] || cargo build --release --workspace --quiet
mkdir -p "$OUT"
lt=target/release/vitalgate-loadtest

# Seconds in a harness duration (500ms, 10s, 2m).
secs() { python3 -c 'import re,sys; n,u=re.fullmatch(r"([0-9.]+)(us|ms|s|m|)",sys.argv[1]).groups(); print(int(float(n)*{"us":1e-6,"ms":1e-3,"s":1,"m":60,"":1}[u])+1)' "$1"; }
# Dashboards connect (up to 60 s), then publish, then the publishers' acks (5 s) and drain.
run_limit=$(( $(secs "$DURATION") + $(secs "$DRAIN") + 90 ))

# What this script started and must stop: the harness run in progress (a `timeout`,
# whose process group holds the harness and what it started), Node-RED, its broker.
run_pid= nodered_pid= broker_pid= nodered_dir=
stop_pid() { # pid, seconds to exit after SIGTERM before SIGKILL
  local pid=$1 tries=$(( $2 * 10 ))
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null && [ $tries -gt 0 ]; do sleep 0.1; tries=$((tries - 1)); done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
stop_nodered() {
  stop_pid "$nodered_pid" 5; nodered_pid=
  stop_pid "$broker_pid" 2; broker_pid=
  [ -z "$nodered_dir" ] || rm -rf "$nodered_dir"; nodered_dir=
}
fanout_pid= fanout_broker= fanout_dir=
stop_fanout() {
  stop_pid "$fanout_pid" 2; fanout_pid=
  stop_pid "$fanout_broker" 2; fanout_broker=
  [ -z "$fanout_dir" ] || rm -rf "$fanout_dir"; fanout_dir=
}
cleanup() {
  stop_pid "$run_pid" 15; run_pid=
  stop_nodered
  stop_fanout
}
trap cleanup EXIT
trap 'echo "interrupted"; exit 130' INT
trap 'exit 143' TERM

# One harness run: name, then its arguments. In the background with `wait`, so that
# Ctrl-C reaches the trap at once.
run() {
  local name=$1; shift
  rm -f "$OUT/$name.json"
  timeout -k 10 "$run_limit" "$lt" "$@" --json "$OUT/$name.json" >"$OUT/$name.txt" 2>&1 &
  run_pid=$!
  local rc=0
  wait "$run_pid" || rc=$?
  run_pid=
  case $rc in
    0) ;;
    1) echo "   lost or duplicated deliveries (see $OUT/$name.txt)" ;;
    2) echo "   SLO missed (see $OUT/$name.txt)" ;;
    124|137) echo "   timed out after ${run_limit}s (see $OUT/$name.txt)" ;;
    *) echo "   failed with status $rc (see $OUT/$name.txt)" ;;
  esac
}

# Node-RED, installed once. Without it the Node-RED rows say why.
nodered_js=$NODE_RED_DIR/node_modules/node-red/red.js
if [[ " $CONTENDERS " == *" nodered "* ]] && [ "$REPORT_ONLY" != 1 ]; then
  have=$(node -p "require('./$NODE_RED_DIR/node_modules/node-red/package.json').version" 2>/dev/null || true)
  if [ "$have" != "$NODE_RED_VERSION" ]; then
    echo "installing node-red@$NODE_RED_VERSION into $NODE_RED_DIR (log: $OUT/npm-install.log)"
    npm install --prefix "$NODE_RED_DIR" --no-audit --no-fund --omit=dev --save-exact \
      "node-red@$NODE_RED_VERSION" >"$OUT/npm-install.log" 2>&1 || echo "   npm install failed"
  fi
fi

# Start a private broker and Node-RED for one run, setting ext_http, ext_mqtt
# (host:port) and ext_pid, or fail with the reason in $OUT/nodered-$rate.txt.
start_nodered() {
  local rate=$1 txt=$OUT/nodered-$1.txt
  [ -f "$nodered_js" ] || { echo "node-red is not installed (see $OUT/npm-install.log)" >"$txt"; return 1; }
  nodered_dir=$(mktemp -d "${TMPDIR:-/tmp}/vitalgate-compare-nodered.XXXXXX")
  local mport hport client_id="vitalgate-compare-nodered-$$-$rate-$RANDOM"
  mport=$(free_port)
  # The private broker of loadtest/broker.sh, plus the log of subscriptions that
  # tells when Node-RED is subscribed.
  {
    broker_conf "$mport"
    printf 'log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\nlog_type subscribe\n'
  } >"$nodered_dir/mosquitto.conf"
  "$MOSQUITTO" -c "$nodered_dir/mosquitto.conf" >/dev/null 2>"$OUT/nodered-$rate.mosquitto.log" &
  broker_pid=$!
  hport=$(free_port)
  cp loadtest/nodered/flows.json "$nodered_dir/flows.json"
  VG_MQTT_HOST=127.0.0.1 VG_MQTT_PORT=$mport VG_MQTT_CLIENT_ID=$client_id \
    node "$nodered_js" --settings loadtest/nodered/settings.js --userDir "$nodered_dir" \
    --port "$hport" </dev/null >"$OUT/nodered-$rate.log" 2>&1 &
  nodered_pid=$!
  local deadline=$((SECONDS + 60))
  until listening "$hport" \
      && grep -qF " $client_id 1 clinic/+/chair/+/vitals" "$OUT/nodered-$rate.mosquitto.log" 2>/dev/null; do
    if ! kill -0 "$nodered_pid" 2>/dev/null || ! kill -0 "$broker_pid" 2>/dev/null \
        || [ $SECONDS -ge $deadline ]; then
      echo "Node-RED did not start and subscribe within 60 s (see $OUT/nodered-$rate.log)" >"$txt"
      return 1
    fi
    sleep 0.1
  done
  ext_http=127.0.0.1:$hport ext_mqtt=127.0.0.1:$mport ext_pid=$nodered_pid
}

# Start a private broker and the fan-out floor for one run, setting ext_http,
# ext_mqtt (host:port) and ext_pid, or fail with the reason in $OUT/fanout-$rate.txt.
start_fanout() {
  local rate=$1 txt=$OUT/fanout-$1.txt
  fanout_dir=$(mktemp -d "${TMPDIR:-/tmp}/vitalgate-compare-fanout.XXXXXX")
  local started=0
  start_broker "$fanout_dir" >"$txt" && started=1
  fanout_broker=$broker # stopped by stop_fanout even if it never listened
  [ "$started" = 1 ] || return 1
  # shellcheck disable=SC2086 # FANOUT_ARGS is a list of flags
  target/release/vitalgate-fanout-floor --broker "127.0.0.1:$mqtt_port" ${FANOUT_ARGS:-} \
    >"$fanout_dir/out" 2>"$OUT/fanout-$rate.log" &
  fanout_pid=$!
  local deadline=$((SECONDS + 30))
  until grep -q '^listening on ' "$fanout_dir/out" 2>/dev/null; do
    if ! kill -0 "$fanout_pid" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
      echo "the fan-out floor did not subscribe within 30 s (see $OUT/fanout-$rate.log)" >"$txt"
      return 1
    fi
    sleep 0.1
  done
  ext_http=$(sed -n 's/^listening on //p' "$fanout_dir/out" | head -1)
  ext_mqtt=127.0.0.1:$mqtt_port ext_pid=$fanout_pid
}

# run_beside nodered|fanout RATE: start that contender (start_nodered, start_fanout),
# run the harness against it as a --gateway that sends no snapshot, stop it.
run_beside() {
  local who=$1 rate=$2
  rm -f "$OUT/$who-$rate.json"
  if "start_$who" "$rate"; then
    run "$who-$rate" "${common[@]}" --dashboards "$DASHBOARDS" \
      --gateway "$ext_http" --broker "$ext_mqtt" --gateway-pid "$ext_pid" --ready-on-connect
  else
    echo "   $(cat "$OUT/$who-$rate.txt")"
  fi
  "stop_$who"
}

for rate in $RATES; do
  [ "$REPORT_ONLY" != 1 ] || break
  chairs=$(( rate / CHAIR_RATE ))
  common=(--chairs "$chairs" --rate "$CHAIR_RATE" --duration "$DURATION" --drain "$DRAIN"
    --breach-every "$BREACH_EVERY")
  for who in $CONTENDERS; do
    case $who in
      floor)
        echo "== $rate readings/s: floor"
        run "floor-$rate" "${common[@]}" --broker mosquitto --floor ;;
      nodered)
        echo "== $rate readings/s: Node-RED, $DASHBOARDS dashboards"
        run_beside nodered "$rate" ;;
      fanout)
        echo "== $rate readings/s: fan-out floor ${FANOUT_ARGS:-}, $DASHBOARDS dashboards"
        echo "${FANOUT_ARGS:-}" >"$OUT/fanout-$rate.args"
        run_beside fanout "$rate" ;;
      vitalgate)
        echo "== $rate readings/s: vitalgate, $DASHBOARDS dashboards"
        run "vitalgate-$rate" "${common[@]}" --broker mosquitto --dashboards "$DASHBOARDS" ;;
      cluster[1-9])
        echo "== $rate readings/s: cluster mode, ${who#cluster} gateway(s), $DASHBOARDS dashboards"
        run "$who-$rate" "${common[@]}" --cluster "${who#cluster}" --dashboards "$DASHBOARDS" ;;
      baseline)
        echo "== $rate readings/s: baseline ${BASELINE_BIN:?set BASELINE_BIN}, $DASHBOARDS dashboards"
        run "baseline-$rate" "${common[@]}" --broker mosquitto --dashboards "$DASHBOARDS" \
          --vitalgate-bin "$BASELINE_BIN" ;;
      *) echo "unknown contender '$who' in CONTENDERS (floor, nodered, fanout, vitalgate, clusterN, baseline)"; exit 3 ;;
    esac
  done
done

python3 - "$OUT" "$MAX_P99_MS" "$CONTENDERS" $RATES <<'PY'
import sys
out, max_p99, contenders, rates = sys.argv[1], float(sys.argv[2]), sys.argv[3].split(), sys.argv[4:]
sys.dont_write_bytecode = True  # no __pycache__ in the repo
sys.path.insert(0, "loadtest")
from reports import NAMES as names, kept_up as judge, report
short = dict(names, fanout="fan-out")  # in the ratio rows
kept_up = lambda r: judge(r, max_p99)

print()
print(f"{'readings/s':>10} {'who':<18} {'sent/s':>8} {'lost':>6} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
      f"{'max ms':>9} {'CPU %':>6} {'RSS MiB':>8} {'NATS %':>6}  kept up   (latency from intended send)")
ok = {who: {} for who in contenders}
for rate in rates:
    rows = {}
    for who in contenders:
        r = report(out, who, rate)
        if r is None:
            ok[who][rate] = False
            print(f"{rate:>10} {names[who]:<18} (no report: see {out}/{who}-{rate}.txt)")
            continue
        l = r["alarm_latency_from_intended"]
        why = kept_up(r)
        ok[who][rate] = why is None
        rows[who] = l
        cpu = r["gateway_cpu_percent"]
        rss = r["gateway_max_rss_mib"]
        nats = r.get("nats_cpu_percent")
        print(f"{rate:>10} {names[who]:<18} {r['achieved_readings_per_s']:>8.0f} {r['breach_deliveries_lost']:>6} "
              f"{l['p50_ms']:>8.3f} {l['p99_ms']:>8.3f} {l['p999_ms']:>9.3f} {l['max_ms']:>9.3f} "
              f"{'' if cpu is None else f'{cpu:.0f}':>6} {'' if rss is None else f'{rss:.1f}':>8} "
              f"{'' if nats is None else f'{nats:.0f}':>6}  "
              f"{'yes' if why is None else 'NO: ' + why}")
    for other in ("floor", "fanout", "nodered", "baseline"):
        if "vitalgate" in rows and other in rows and rows[other]["p50_ms"] > 0:
            v, o = rows["vitalgate"], rows[other]
            note = "" if ok["vitalgate"][rate] and ok[other][rate] else \
                "  (a run did not keep up: latency of what arrived)"
            print(f"{'':>10} {'vitalgate/' + short[other]:<18} {'':>8} {'':>6} {v['p50_ms']/o['p50_ms']:>8.2f} "
                  f"{v['p99_ms']/max(o['p99_ms'],1e-9):>8.2f} {v['p999_ms']/max(o['p999_ms'],1e-9):>9.2f}{note}")
    for who in (w for w in contenders if w.startswith("cluster")):
        if who in rows and "vitalgate" in rows and rows["vitalgate"]["p50_ms"] > 0:
            c, v = rows[who], rows["vitalgate"]
            print(f"{'':>10} {who + '/vitalgate':<18} {'':>8} {'':>6} {c['p50_ms']/v['p50_ms']:>8.2f} "
                  f"{c['p99_ms']/max(v['p99_ms'],1e-9):>8.2f} {c['p999_ms']/max(v['p999_ms'],1e-9):>9.2f}")

print(f"\nSustainable rate (highest rate in RATES up to which every run kept up: nothing lost, "
      f">= 99 % of target sent, p99 <= {max_p99:.0f} ms):")
for who in contenders:
    best = None
    for rate in sorted(rates, key=float):
        if not ok[who][rate]:
            break
        best = rate
    text = "none of the rates tried" if best is None else f"{best} readings/s"
    if best is not None and best == max(rates, key=float):
        text += " (the highest tried)"
    print(f"  {names[who]:<13} {text}")
print("\nCPU % (of one core) and RSS are the broker's for the floor, Node-RED's (node), the fan-out\n"
      "floor's and the gateway's (a cluster's gateways together; NATS % its three nodes together).")
PY
