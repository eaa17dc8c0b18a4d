# Sourced by the load-test scripts: free ports, and a private Mosquitto with the
# settings the no-loss promise needs under load (the harness's own private broker,
# start_mosquitto in loadtest/src/target.rs, uses the same: keep them in step).

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Whether something listens on 127.0.0.1:PORT.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

# The configuration of a private broker on 127.0.0.1:PORT.
broker_conf() {
  printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 1000\nmax_queued_messages 1000000\nset_tcp_nodelay true\nuser root\n' "$1"
}

# start_broker DIR [COMMAND PREFIX...]: start one on a free port (under the prefix,
# e.g. `taskset -c 0`), its configuration and log in DIR; sets `broker` (its pid)
# and `mqtt_port`. Fails, showing the log, if it does not listen within 10 s.
start_broker() {
  local dir=$1
  shift
  mqtt_port=$(free_port)
  broker_conf "$mqtt_port" >"$dir/mosquitto.conf"
  "$@" "$MOSQUITTO" -c "$dir/mosquitto.conf" >"$dir/mosquitto.log" 2>&1 &
  broker=$!
  for _ in $(seq 1 100); do
    listening "$mqtt_port" && return 0
    sleep 0.1
  done
  cat "$dir/mosquitto.log"
  echo "mosquitto did not start"
  return 1
}

# start_gateway DIR NAME COMMAND...: start a gateway subscribed to the broker of
# start_broker (on $mqtt_port) with MQTT client id NAME-<pid>, its audit trail and
# log in DIR, on a free HTTP port. COMMAND runs the binary, under a prefix such as
# `taskset -c 0` or `env VAR=value` for settings of the caller's own. Sets `gw` (its
# pid) and `http_port`. Fails, showing the log, if it is not ready within 30 s.
start_gateway() {
  local dir=$1 name=$2
  shift 2
  http_port=$(free_port)
  VITALGATE_HTTP__BIND=127.0.0.1:$http_port \
  VITALGATE_MQTT__BROKER=external \
  VITALGATE_MQTT__HOST=127.0.0.1 \
  VITALGATE_MQTT__PORT=$mqtt_port \
  VITALGATE_MQTT__CLIENT_ID=$name-$$ \
  VITALGATE_AUDIT__PATH=$dir/audit.sqlite3 \
  RUST_LOG=warn \
    "$@" >"$dir/gateway.log" 2>&1 &
  gw=$!
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$http_port/ready" >/dev/null && return 0
    sleep 0.1
  done
  cat "$dir/gateway.log"
  echo "gateway not ready"
  return 1
}
