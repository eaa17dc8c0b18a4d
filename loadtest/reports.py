"""What compare.sh and repeat.sh both read in a harness report: contender names,
the report of a contender at a rate, and whether a run kept up (compare.sh's
header gives the rules)."""

import json

NAMES = {"floor": "floor", "nodered": "Node-RED", "fanout": "fan-out floor", "vitalgate": "vitalgate",
         "baseline": "baseline"}
NAMES.update({f"cluster{n}": f"cluster, {n} gw" for n in range(1, 10)})


def report(out, who, rate):
    """The report `who` wrote at `rate` under `out`, or None if it wrote none."""
    try:
        with open(f"{out}/{who}-{rate}.json") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def kept_up(r, max_p99):
    """Why a run did not keep up, or None."""
    l = r["alarm_latency_from_intended"]
    if r["breaches"] == 0:
        return "no breach measured"
    if r["breach_deliveries_lost"] or r["duplicate_alarm_events"]:
        return f"lost {r['breach_deliveries_lost']}, duplicates {r['duplicate_alarm_events']}"
    if r["dashboards_failed"]:
        return f"{len(r['dashboards_failed'])} dashboards failed"
    if r["readings_acked_by_broker"] < r["readings_sent"]:
        return "readings not acked by the broker"
    if r["achieved_readings_per_s"] < 0.99 * r["target_readings_per_s"]:
        return "generator below 99 % of target"
    if l["p99_ms"] > max_p99:
        return f"p99 > {max_p99:.0f} ms"
    return None
