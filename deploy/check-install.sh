#!/usr/bin/env bash
# Runs docs/operations.md, "Install on one clinic machine" (steps 1-4, and step 5's
# Prometheus part), literally, in a Debian 12 root booted with systemd as PID 1 by
# systemd-nspawn, then checks what the recipe promises: the service active under
# Type=notify with the documented status, /ready, the watchdog leaving a healthy
# gateway alone and restarting a hung one (SIGSTOP), Mosquitto running as its own
# user with the per-device ACL. Exits non-zero if a recipe command or a check fails.
#
#   sudo deploy/check-install.sh        (root; needs debootstrap, systemd-container,
#                                        network access to deb.debian.org; ~5 minutes
#                                        plus a release build)
#
# Deviations from the recipe, forced by the set-up: the release binary is built
# here (niced) and copied in instead of `cargo build` inside the container; the
# clinic's certificates are a throw-away CA and a localhost server certificate; the
# container has a private network, so the .deb files are fetched beforehand and the
# recipe's `apt-get install -y` runs offline; step 5's manual edit of
# prometheus.yml is done with sed.
set -uo pipefail
REPO=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
W=${VITALGATE_CHECK_DIR:-/var/tmp/vitalgate-install-check}
BASE=$W/base      # debootstrap + downloaded .debs, reused between runs
R=$W/root         # this run's container root
OUT=$W/out
LOG=$OUT/transcript.log
mkdir -p "$OUT"; : >"$LOG"
T0=$(date +%s)
FAILED=0
say() { echo "== $*" | tee -a "$LOG"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL: $*" | tee -a "$LOG"; }
pass() { echo "ok: $*" | tee -a "$LOG"; }
PATH_CT=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

for tool in debootstrap systemd-nspawn nsenter openssl git cargo; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install debootstrap systemd-container)"; exit 2; }
done

say "release build of $(git -C "$REPO" log --oneline -1)"
(cd "$REPO" && nice -n 19 cargo build --release --locked) >"$OUT/build.log" 2>&1 || { say "build failed: $OUT/build.log"; exit 1; }

if [ ! -e "$BASE/.done" ]; then
  say "debootstrap bookworm into $BASE"
  rm -rf "$BASE"
  nice -n 19 debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,libpam-systemd,curl,ca-certificates,openssl,procps,iproute2 \
    bookworm "$BASE" http://deb.debian.org/debian >"$OUT/debootstrap.log" 2>&1 || { say "debootstrap failed"; exit 1; }
  cp /etc/resolv.conf "$BASE/etc/resolv.conf"
  chroot "$BASE" apt-get update -q >>"$OUT/debootstrap.log" 2>&1
  chroot "$BASE" apt-get install -y -q --download-only \
    mosquitto mosquitto-clients prometheus prometheus-alertmanager >>"$OUT/debootstrap.log" 2>&1 || { say "download failed"; exit 1; }
  echo vg-test >"$BASE/etc/hostname"
  # debootstrap writes no /etc/hosts (the installer does): `localhost` must resolve.
  printf '127.0.0.1\tlocalhost\n127.0.1.1\tvg-test\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$BASE/etc/hosts"
  touch "$BASE/.done"
fi
rm -rf "$R"; cp -a "$BASE" "$R"; rm -f "$R/.done"

# The recipe's working directory: the committed tree, the binary, test certificates.
D=$R/root/vitalgate
mkdir -p "$D/target/release"
git -C "$REPO" archive HEAD | tar -x -C "$D"
cp "$REPO/target/release/vitalgate" "$D/target/release/vitalgate"
(
  cd "$D"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=Test clinic CA" \
    -keyout ca.key -out ca.pem 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >san.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
    -extfile san.ext -out server.pem 2>/dev/null
)

say "booting the container"
systemd-nspawn --keep-unit --register=no --private-network --console=passive \
  --machine=vg-test -b -D "$R" >"$OUT/nspawn.log" 2>&1 </dev/null &
NSPAWN=$!
LEADER=
ct_raw() {
  nsenter -t "$LEADER" -a env -i PATH=$PATH_CT HOME=/root LANG=C.UTF-8 TERM=dumb \
    /bin/bash -c "cd /root/vitalgate && $1" </dev/null 2>&1
}
ct() {  # a command in the container, logged with its exit code
  local out rc
  out=$(ct_raw "$1"); rc=$?
  printf -- '\n$ %s\n%s\n[exit %s]\n' "$1" "$out" "$rc" >>"$LOG"
  printf '%s\n' "$out"
  return $rc
}
cleanup() {
  if kill -0 "$NSPAWN" 2>/dev/null; then
    [ -n "$LEADER" ] && ct_raw 'systemctl poweroff' >/dev/null 2>&1
    for _ in $(seq 30); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 1; done
    kill -0 "$NSPAWN" 2>/dev/null && kill -KILL "$NSPAWN"
    wait "$NSPAWN" 2>/dev/null
  fi
  say "$FAILED failed; $(( $(date +%s) - T0 )) s; transcript: $LOG"
}
trap cleanup EXIT
for _ in $(seq 30); do LEADER=$(pgrep -P "$NSPAWN" | head -1); [ -n "$LEADER" ] && break; sleep 1; done
[ -n "$LEADER" ] || { say "the container did not start"; cat "$OUT/nspawn.log"; exit 1; }
ct 'systemctl is-system-running --wait' >/dev/null

# The section's fenced blocks, in order, list indentation removed.
awk '/^## Install on one clinic machine/{s=1;next} s&&/^## /{exit} s' "$D/docs/operations.md" |
  awk -v dir="$OUT" '/^ *```/{ if(inb){inb=0;close(f);next} n++; inb=1; f=dir "/block" n; printf "" >f; next }
                     inb{ sub(/^   /,""); print >>f }'
run_block() {  # each command line of a block, literally
  local line
  while IFS= read -r line; do
    [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
    case $line in
      "cargo build"*) printf -- '\n$ %s\n(built outside the container)\n' "$line" >>"$LOG" ;;
      "promtool check config"*)
        ct "sed -i '/^rule_files:/a\\  - /etc/prometheus/vitalgate-rules.yml' /etc/prometheus/prometheus.yml &&
            printf '%s\n' '  - job_name: vitalgate' '    static_configs:' '      - targets: [\"127.0.0.1:8080\"]' >>/etc/prometheus/prometheus.yml" >/dev/null
        ct "$line" >/dev/null || fail "$line" ;;
      *) ct "$line" >/dev/null || fail "$line" ;;
    esac
  done <"$1"
}
say "step 1"; run_block "$OUT/block1"
say "step 2"; run_block "$OUT/block2"
say "step 3"
TOML=$(head -1 "$OUT/block3" | sed 's/^# *//')
cp "$OUT/block3" "$R$TOML"
run_block "$OUT/block4"
say "step 4"; run_block "$OUT/block5"

say "checks"
status=$(ct 'systemctl status --no-pager vitalgate')
grep -q 'active (running)' <<<"$status" && pass "vitalgate active (running)" || fail "vitalgate not active: $status"
grep -q 'Status: "subscribed to the broker; alarms flowing"' <<<"$status" \
  && pass "status says subscribed right after start" || fail "status: $status"
[ "$(ct_raw 'systemctl show -p Type --value vitalgate')" = notify ] && pass "Type=notify" || fail "Type"
ready=$(ct_raw 'curl -s -o /dev/null -w "%{http_code}" 127.0.0.1:8080/ready')
[ "$ready" = 200 ] && pass "/ready 200" || fail "/ready $ready"
[ "$(ct_raw 'ps -o user= -C mosquitto | head -1')" = mosquitto ] && pass "mosquitto runs as mosquitto" || fail "mosquitto user"

PW1=$(awk '/^\$ deploy\/mosquitto\/add-device.sh north 1/{getline; print $2; exit}' "$LOG")
TLS="-h localhost -p 8883 --cafile /root/vitalgate/ca.pem -q 1"
reading() { printf '"{\\"seq\\":%s,\\"ts\\":$(date +%%s%%3N),\\"hr\\":80,\\"spo2\\":98,\\"rr\\":14}"' "$1"; }
ingested() { ct_raw "curl -s 127.0.0.1:8080/metrics | awk '/^vitalgate_readings_ingested_total /{print \$2}'"; }
before=$(ingested)
ct "mosquitto_pub $TLS -V mqttv5 -u device-north-1 -P '$PW1' -t clinic/north/chair/1/vitals -m $(reading 1)" >/dev/null \
  && pass "a device publishes its own chair" || fail "own chair publish"
other=$(ct "mosquitto_pub $TLS -V mqttv5 -u device-north-1 -P '$PW1' -t clinic/north/chair/2/vitals -m $(reading 2)")
grep -q 'Not authorized' <<<"$other" && pass "another chair's topic: Not authorized" || fail "another chair's topic: $other"
sleep 2
after=$(ingested)
[ "$after" = "$((before + 1))" ] && pass "the gateway ingested exactly the own-chair reading" || fail "ingested $before -> $after"

say "watchdog: a healthy gateway for 70 s"
P0=$(ct_raw 'systemctl show -p MainPID --value vitalgate')
sleep 70
[ "$(ct_raw 'systemctl show -p MainPID --value vitalgate')" = "$P0" ] && pass "not restarted while healthy" || fail "restarted while healthy"
ct 'journalctl -b -u vitalgate --no-pager | grep -iE "watchdog|not pinging"' >/dev/null \
  && fail "watchdog complaints on a healthy gateway" || pass "no watchdog complaint while healthy"
say "watchdog: SIGSTOP"
ct "kill -STOP $P0" >/dev/null
for _ in $(seq 60); do
  sleep 1
  P1=$(ct_raw 'systemctl show -p MainPID --value vitalgate')
  [ -n "$P1" ] && [ "$P1" != 0 ] && [ "$P1" != "$P0" ] && break
done
ct 'journalctl -b -u vitalgate --no-pager | grep -q "Watchdog timeout"' >/dev/null \
  && pass "a hung gateway is restarted by the watchdog" || fail "no watchdog restart"
for _ in $(seq 20); do [ "$(ct_raw 'curl -s -o /dev/null -w "%{http_code}" 127.0.0.1:8080/ready')" = 200 ] && break; sleep 1; done
[ "$(ct_raw 'curl -s -o /dev/null -w "%{http_code}" 127.0.0.1:8080/ready')" = 200 ] && pass "/ready 200 after the restart" || fail "/ready after restart"

say "step 5 (prometheus)"; run_block "$OUT/block6"
ct 'cd deploy/prometheus && promtool test rules vitalgate-rules.test.yml' >/dev/null && pass "promtool test rules" || fail "promtool test rules"
[ "$FAILED" = 0 ]
