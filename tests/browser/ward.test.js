// The station's ward model (web/ward.js) on its own: it holds no DOM, so it runs
// under node as it runs in the page.

import assert from "node:assert/strict";
import { test } from "node:test";
import { TREND_MS, Ward, compareAlarms, highestPriority } from "../../web/ward.js";
import { group } from "../../web/history.js";

/** @param {Partial<import("../../web/ward.js").AlarmFrame>} a */
function alarm(a) {
  return /** @type {import("../../web/ward.js").AlarmFrame} */ ({
    id: 1, state: "raised", chair: "north/1", kind: "physiological", vital: "spo2", rule: "spo2_critical", condition: "low",
    value: 82, limit: 86, priority: "high", message: "SpO2 82 below 86", latching: false, ts: 1, received_at: 1, raised_ts: 1,
    escalated: false, escalation_level: 0, reminder: false, ...a,
  });
}

test("a snapshot replaces the ward: chairs it no longer lists leave, alarms are exactly its own", () => {
  const w = new Ward();
  w.applyVitals({ chair: "north/1", site: "north", vitals: { hr: { value: 70, ts: 1 } } });
  w.applyVitals({ chair: "north/2", site: "north", vitals: { hr: { value: 71, ts: 1 } } });
  w.applyAlarm(alarm({ id: 5, chair: "north/2" }));
  const gone = w.applySnapshot({ instance: "i", seq: 9, chairs: [{ chair: "north/1", site: "north", vitals: {} }], alarms: [alarm({ id: 6 })] }, false);
  assert.deepEqual(gone, ["north/2"]);
  assert.deepEqual([...w.chairs.keys()], ["north/1"]);
  assert.deepEqual([...w.alarms.keys()], [6]);
  assert.equal(w.seq, 9);
  assert.equal(w.instance, "i");
});

test("a cleared alarm leaves; an acknowledged one stays, after the unacknowledged", () => {
  const w = new Ward();
  w.applyAlarm(alarm({ id: 1, seq: 10 }));
  w.applyAlarm(alarm({ id: 2, seq: 11, priority: "medium" }));
  w.applyAlarm(alarm({ id: 1, seq: 12, state: "acknowledged", acknowledged_by: "kim" }));
  assert.deepEqual(w.alarmsOf("north/1").map((a) => a.id), [2, 1], "unacknowledged medium before acknowledged high");
  assert.equal(highestPriority(w.alarmsOf("north/1")), "high");
  w.applyAlarm(alarm({ id: 2, seq: 13, state: "cleared" }));
  assert.deepEqual([...w.alarms.keys()], [1]);
  assert.equal(w.seq, 13, "the last applied seq is kept for `since`");
  assert.ok(compareAlarms(alarm({ priority: "high" }), alarm({ priority: "low" })) < 0);
});

test("the trend keeps 15 minutes of device time, thinned, and starts over when the device clock steps back", () => {
  const w = new Ward();
  const t0 = 1_700_000_000_000;
  for (let s = 0; s <= 3600; s++) {
    w.applyVitals({ chair: "a/1", site: "a", vitals: { spo2: { value: s === 3000 ? 80 : 97, ts: t0 + s * 1000 } } });
  }
  const t = /** @type {import("../../web/ward.js").Chair} */ (w.chairs.get("a/1")).trend.spo2;
  const times = t.filter((_, i) => i % 2 === 0);
  assert.ok(times[0] >= t0 + 3600_000 - TREND_MS, "nothing older than 15 minutes");
  assert.ok(times.length <= TREND_MS / 2000 + 2, `${times.length} samples`);
  assert.ok(t.includes(80), "a one-second dip survives the thinning");
  // NTP stepped the device clock back an hour: the line restarts at the new time.
  w.applyVitals({ chair: "a/1", site: "a", vitals: { spo2: { value: 96, ts: t0 } } });
  assert.deepEqual(t, [t0, 96]);
});

test("the history makes one row per alarm, newest first, with who acknowledged and the clearing", () => {
  const rows = group([
    alarm({ id: 1, raised_ts: 100, received_at: 100 }),
    alarm({ id: 2, raised_ts: 200, received_at: 200, priority: "medium" }),
    alarm({ id: 1, state: "acknowledged", acknowledged_by: "kim", received_at: 150, raised_ts: 100 }),
    alarm({ id: 1, state: "acknowledged", reminder: true, acknowledged_by: "kim", received_at: 450, raised_ts: 100 }),
    alarm({ id: 1, state: "raised", escalated: true, escalation_level: 2, raised_ts: 100 }),
    alarm({ id: 1, state: "cleared", reason: "acknowledged", received_at: 500, raised_ts: 100 }),
  ]);
  assert.deepEqual(rows.map((r) => r.raised.id), [2, 1]);
  const one = rows[1];
  assert.equal(one.acked?.received_at, 150, "the acknowledgement, not the reminder");
  assert.equal(one.cleared?.reason, "acknowledged");
  assert.equal(one.escalation, 2);
  assert.equal(rows[0].acked, null);
});

test("a refreshing snapshot keeps newer live values; one after `missed` starts the chair again", () => {
  const w = new Ward();
  w.applyVitals({ chair: "a/1", site: "a", received_at: 200, vitals: { hr: { value: 90, ts: 190 } } });
  // Read just before: older than what live vitals brought.
  w.applySnapshot({ instance: "i", seq: 1, chairs: [{ chair: "a/1", site: "a", received_at: 150, vitals: { hr: { value: 80, ts: 140 } } }], alarms: [] }, false);
  assert.equal(w.chairs.get("a/1")?.vitals.hr?.value, 90);
  w.applySnapshot({ instance: "i", seq: 2, chairs: [{ chair: "a/1", site: "a", received_at: 300, vitals: { spo2: { value: 95, ts: 290 } } }], alarms: [] }, true);
  const c = w.chairs.get("a/1");
  assert.equal(c?.vitals.hr, undefined, "nothing of before the gap survives");
  assert.equal(c?.vitals.spo2?.value, 95);
});

test("a chair's values the gateway forgot leave the tile: another patient's values, trend and pump are not shown", () => {
  const w = new Ward();
  const pump = { running: true, rate_ml_h: 40, infused_ml: 20, ts: 100 };
  w.applyVitals({ chair: "a/1", site: "a", received_at: 100, vitals: { sbp: { value: 150, ts: 100 }, hr: { value: 90, ts: 100 } }, pump });
  w.applyVitals({ chair: "a/1", site: "a", received_at: 100, vitals: {} });
  const c = w.chairs.get("a/1");
  assert.deepEqual(c?.vitals, {}, "the emptied values replace the previous patient's");
  assert.equal(c?.pump, null);
  assert.deepEqual(c?.trend.sbp, []);
  // The next patient's first reading: nothing of the previous one comes back.
  w.applyVitals({ chair: "a/1", site: "a", received_at: 200, vitals: { hr: { value: 70, ts: 200 } } });
  assert.deepEqual(Object.keys(c?.vitals ?? {}), ["hr"]);
  // A frame lacking some values is not a forgetting (a cluster takeover without
  // the chair's copy): the older values stay, with their age.
  w.applyVitals({ chair: "a/1", site: "a", received_at: 300, vitals: { hr: { value: 71, ts: 300 }, sbp: { value: 120, ts: 300 } }, pump });
  w.applyVitals({ chair: "a/1", site: "a", received_at: 400, vitals: { hr: { value: 72, ts: 400 } } });
  assert.deepEqual(Object.keys(c?.vitals ?? {}).sort(), ["hr", "sbp"]);
  assert.equal(c?.pump, pump);
});

test("a session of another patient, or the chair idle, starts the trend again", () => {
  const w = new Ward();
  /** @param {Partial<import("../../web/ward.js").SessionFrame>} s */
  const session = (s) => /** @type {import("../../web/ward.js").SessionFrame} */ ({
    chair: "a/1", change: "phase", phase: "infusion", patient: "P-1", route: "iv", phase_since: 1, baseline: {}, limits: {},
    discharge_ready: false, at: 1, ...s,
  });
  const trend = () => w.chairs.get("a/1")?.trend.sbp.length ?? 0;
  w.applySession(session({}));
  w.applyVitals({ chair: "a/1", site: "a", vitals: { sbp: { value: 150, ts: 100 } } });
  w.applySession(session({ change: "limits", limits: { sbp_high: { high: 190 } } }));
  w.applySession(session({ phase: "discharged" }));
  assert.ok(trend() > 0, "the same patient's session changes keep the trend");
  // P-2's first reading may come before the session frame: it stays.
  w.applyVitals({ chair: "a/1", site: "a", received_at: 150, vitals: { hr: { value: 70, ts: 150 } } });
  w.applySession(session({ phase: "baseline", patient: "P-2" }));
  assert.equal(trend(), 0, "another patient");
  assert.equal(w.chairs.get("a/1")?.vitals.hr?.value, 70, "P-2's first reading stays");
  w.applyVitals({ chair: "a/1", site: "a", vitals: { sbp: { value: 120, ts: 200 } } });
  w.applySession(session({ phase: "idle", patient: "P-2" }));
  assert.equal(trend(), 0, "the chair idle");
});

test("the history names who acknowledged the alarm at its worst priority, not at a lower one", () => {
  const rose = group([
    alarm({ id: 1, priority: "medium", received_at: 100 }),
    alarm({ id: 1, priority: "medium", state: "acknowledged", acknowledged_by: "kim", received_at: 150 }),
    alarm({ id: 1, priority: "high", updated: true, previous_priority: "medium", received_at: 200 }),
    alarm({ id: 1, priority: "high", state: "cleared", received_at: 300 }),
  ])[0];
  assert.equal(rose.worst.priority, "high");
  assert.equal(rose.acked, null, "nobody acknowledged it at HIGH");
  const fell = group([
    alarm({ id: 2, priority: "high", received_at: 100 }),
    alarm({ id: 2, priority: "high", state: "acknowledged", acknowledged_by: "lee", received_at: 150 }),
    alarm({ id: 2, priority: "medium", updated: true, previous_priority: "high", received_at: 200 }),
    alarm({ id: 2, priority: "medium", state: "acknowledged", acknowledged_by: "kim", received_at: 250 }),
  ])[0];
  assert.equal(fell.acked?.acknowledged_by, "lee");
});

test("the alarms that ended while a station was not connected are kept to be told, once", async () => {
  const { Outage } = await import("../../web/outage.js");
  const o = new Outage();
  o.status(true, 0, 50);
  assert.equal(o.alarm(alarm({ id: 1, state: "cleared", received_at: 60 }), undefined), false, "connected: nothing to tell");
  o.status(false, 100, 110);
  o.status(false, 100, 120);
  const known = alarm({ id: 2, state: "raised", received_at: 130, message: "SpO2 80 below 86" });
  assert.equal(o.alarm(alarm({ id: 2, state: "cleared", received_at: 140, message: "SpO2 97 above 88" }), known), true);
  assert.equal(o.take(), null, "not while the gap lasts");
  o.status(true, 100, 200);
  // Replayed after the reconnection: still in the gap. A live one after it is not.
  assert.equal(o.alarm(alarm({ id: 3, state: "cleared", received_at: 190 }), undefined), true);
  assert.equal(o.alarm(alarm({ id: 4, state: "cleared", received_at: 210 }), undefined), false);
  assert.equal(o.alarm(alarm({ id: 5, state: "raised", received_at: 150 }), undefined), false, "only ended alarms");
  const told = o.take();
  assert.deepEqual({ from: told?.from, to: told?.to }, { from: 100, to: 200 });
  assert.deepEqual(told?.ended.map((a) => a.message), ["SpO2 80 below 86", "SpO2 82 below 86"]);
  assert.equal(o.take(), null, "told once");
});
