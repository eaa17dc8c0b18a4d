#!/usr/bin/env bash
# loadtest/compare.sh, RUNS times (default 4), then the medians.
#
# On a shared machine one run's p99 ratio moves by a third, so a ratio is judged on
# the median of several side-by-side runs. Each run is a whole compare.sh run (every
# contender at every rate, side by side) into $OUT/run-K; the contenders' order is
# rotated from run to run, so that none always runs first or last. Then, per rate and
# contender: the median p50, p99 and CPU; and the p99 of vitalgate (and of baseline)
# over each other contender: each run's ratio, from that run's reports, and their
# median. A run in which a contender did not keep up (compare.sh's rules, MAX_P99_MS
# included) is counted, not left out.
#
#   CONTENDERS="fanout vitalgate" RATES="1000 10000 20000" DURATION=20s loadtest/repeat.sh
#   RUNS=6 CONTENDERS="fanout vitalgate baseline" BASELINE_BIN=... loadtest/repeat.sh
#   REPORT_ONLY=1 OUT=target/repeat loadtest/repeat.sh  # the medians again from saved runs
#
# Every variable compare.sh reads applies to each run (CONTENDERS default here:
# "fanout vitalgate"). OUT (default target/repeat) holds run-1 ... run-RUNS, each a
# compare.sh OUT with its reports and its table (compare.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-4}
OUT=${OUT:-target/repeat}
RATES=${RATES:-"1000 10000 20000"}
CONTENDERS=${CONTENDERS:-"fanout vitalgate"}
REPORT_ONLY=${REPORT_ONLY:-0}
MAX_P99_MS=${MAX_P99_MS:-1000}
export RATES REPORT_ONLY MAX_P99_MS

if [ "$REPORT_ONLY" != 1 ]; then
  read -r -a order <<<"$CONTENDERS"
  for ((k = 1; k <= RUNS; k++)); do
    echo "== run $k of $RUNS: ${order[*]}"
    mkdir -p "$OUT/run-$k"
    CONTENDERS="${order[*]}" OUT="$OUT/run-$k" loadtest/compare.sh | tee "$OUT/run-$k/compare.txt"
    order=("${order[@]:1}" "${order[0]}")
  done
fi

python3 - "$OUT" "$MAX_P99_MS" "$CONTENDERS" $RATES <<'PY'
import glob, statistics, sys
sys.dont_write_bytecode = True  # no __pycache__ in the repo
sys.path.insert(0, "loadtest")
from reports import NAMES as names, kept_up, report
out, max_p99, contenders, rates = sys.argv[1], float(sys.argv[2]), sys.argv[3].split(), sys.argv[4:]
runs = sorted(glob.glob(f"{out}/run-*"), key=lambda d: int(d.rsplit("-", 1)[1]))
if not runs:
    sys.exit(f"no runs under {out}")

med = lambda xs: statistics.median(xs) if xs else float("nan")
print(f"\nMedians of {len(runs)} runs under {out} (latency from intended send):")
print(f"{'readings/s':>10} {'who':<18} {'runs':>4} {'p50 ms':>8} {'p99 ms':>8} {'CPU %':>6}  runs not kept up")
for rate in rates:
    reports = {who: [report(run, who, rate) for run in runs] for who in contenders}
    for who in contenders:
        got = [r for r in reports[who] if r]
        lat = [r["alarm_latency_from_intended"] for r in got]
        cpu = [r["gateway_cpu_percent"] for r in got if r["gateway_cpu_percent"] is not None]
        bad = [str(i + 1) for i, r in enumerate(reports[who]) if r is None or kept_up(r, max_p99)]
        print(f"{rate:>10} {names[who]:<18} {len(got):>4} {med([l['p50_ms'] for l in lat]):>8.3f} "
              f"{med([l['p99_ms'] for l in lat]):>8.3f} {med(cpu):>6.1f}  {' '.join(bad) or '-'}")
    for who in ("vitalgate", "baseline"):
        if who not in contenders:
            continue
        for other in (o for o in contenders if o != who and not (who == "baseline" and o == "vitalgate")):
            ratios = [a["alarm_latency_from_intended"]["p99_ms"] / b["alarm_latency_from_intended"]["p99_ms"]
                      for a, b in zip(reports[who], reports[other])
                      if a and b and b["alarm_latency_from_intended"]["p99_ms"] > 0]
            if ratios:
                each = " ".join(f"{x:.2f}" for x in ratios)
                print(f"{'':>10} p99 {who}/{names[other]}: median {med(ratios):.2f} (each run: {each})")
PY
