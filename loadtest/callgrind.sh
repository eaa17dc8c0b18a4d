#!/usr/bin/env bash
# Instructions the gateway executes under the load harness, counted by callgrind.
#
# CPU time on a shared 2-core machine moves by a fifth from run to run; callgrind
# counts instructions (user space only: not the kernel's share of syscalls and
# context switches), which stay within about 3 % for the same binary and load.
# So a change to the cost of a reading is judged here first, and in CPU time
# (repeat.sh) second.
#
#   loadtest/callgrind.sh                          # target/release/vitalgate, 1,500/s
#   RUNS=3 loadtest/callgrind.sh /tmp/other-build/vitalgate
#   RATE=1000 DURATION=30s loadtest/callgrind.sh BIN
#
# Each run: the harness starts the gateway (BIN, default target/release/vitalgate)
# under `valgrind --tool=callgrind` with its private Mosquitto, RATE readings/s (RATE
# / 10 chairs at 10 readings/s each) for DURATION, 10 dashboards, a surge per chair
# per 20 s on average; a run is stopped after 10 minutes. Prints per run the
# instructions of the whole process and of the reading path (the ingest task, the
# engine task and the journal thread, inclusive; a build without an engine has only
# the first, which then holds the whole path), in millions, and per reading sent.
# Profiles stay in $OUT (default target/callgrind) for callgrind_annotate. Exits 1
# if a run failed.
set -euo pipefail
BIN=$(realpath -e "${1:-$(dirname "$0")/../target/release/vitalgate}") ||
  { echo "no gateway binary at ${1:-target/release/vitalgate}"; exit 3; }
[ -x "$BIN" ] || { echo "$BIN is not executable"; exit 3; }
OUT=$(realpath -m "${OUT:-$(dirname "$0")/../target/callgrind}")
cd "$(dirname "$0")/.."
RATE=${RATE:-1500}
DURATION=${DURATION:-20s}
RUNS=${RUNS:-1}
failed=0
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)"; exit 3; }
[ -x target/release/vitalgate-loadtest ] || cargo build --release -p vitalgate-loadtest --quiet
mkdir -p "$OUT"
wrapper="$OUT/under-callgrind.sh"
cat >"$wrapper" <<'SH'
#!/usr/bin/env bash
exec valgrind --tool=callgrind --callgrind-out-file="$CALLGRIND_OUT" "$CALLGRIND_BIN" "$@" 2>>"$CALLGRIND_OUT.log"
SH
chmod +x "$wrapper"

for ((k = 1; k <= RUNS; k++)); do
  profile="$OUT/run-$k.callgrind"
  rm -f "$profile" "$profile.log"
  CALLGRIND_BIN=$BIN CALLGRIND_OUT=$profile timeout -k 10 600 \
    target/release/vitalgate-loadtest --chairs $((RATE / 10)) --rate 10 --duration "$DURATION" \
    --drain 5s --breach-every 20s --broker mosquitto --dashboards 10 \
    --vitalgate-bin "$wrapper" --json "$OUT/run-$k.json" >"$OUT/run-$k.txt" 2>&1 ||
    { echo "run $k: the harness failed (see $OUT/run-$k.txt)"; failed=1; continue; }
  # The gateway exits (and callgrind writes its profile) after the harness's SIGTERM.
  [ -s "$profile" ] || { echo "run $k: no profile (see $profile.log)"; failed=1; continue; }
  python3 - "$profile" "$OUT/run-$k.json" "$k" <<'PY' || { echo "run $k: not read"; failed=1; }
import json, re, subprocess, sys
profile, report, k = sys.argv[1:]
sent = json.load(open(report))["readings_sent"]
total = int(re.search(r"^(?:summary|totals): (\d+)", open(profile).read(), re.M).group(1))
annotated = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--auto=no", "--threshold=100", profile],
                           capture_output=True, text=True, check=True).stdout
path = {"src/ingest/mqtt.rs": "vitalgate::ingest::mqtt::Ingest::run::{{closure}}",
        "src/engine/task.rs": "vitalgate::engine::task::run::{{closure}}",
        "src/engine/journal.rs": "vitalgate::engine::journal::run"}
# A function inlined into others is listed once more per caller's file: its
# largest entry is its own, inclusive.
found = {}
for line in annotated.splitlines():
    m = re.match(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S+?):(\S+)", line)
    if m and any(m.group(2).endswith(f) and m.group(3) == fn for f, fn in path.items()):
        found[m.group(3)] = max(found.get(m.group(3), 0), int(m.group(1).replace(",", "")))
reading_path = sum(found.values())
if not found:
    sys.exit(f"run {k}: the ingest task is not in the profile (renamed?)")
print(f"run {k}: {sent} readings; whole process {total / 1e6:.1f} M instructions "
      f"({total / sent:,.0f} a reading), reading path {reading_path / 1e6:.1f} M "
      f"({reading_path / sent:,.0f} a reading; {len(found)} of ingest, engine, journal found)")
PY
done
exit "$failed"
