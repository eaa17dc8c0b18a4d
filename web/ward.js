// The ward as the station knows it: chairs, their sessions and latest vitals, the
// active alarms, and each chair's 15-minute trend. Pure state: no DOM, no socket.
//
// Invariants:
// - `alarms` holds exactly the active alarms (raised or acknowledged, not cleared)
//   as of `seq`, each as its latest event; a snapshot replaces it whole.
// - A chair a new snapshot no longer lists has been forgotten by the gateway and
//   leaves the ward (its trend too).
// - Trends are kept on device time and pruned to TREND_MS behind the newest sample,
//   so memory stays bounded however long the station runs.

/** @typedef {"hr"|"spo2"|"sbp"|"dbp"|"rr"|"etco2"} Vital */
/** @typedef {"high"|"medium"|"low"} Priority */
/** @typedef {"idle"|"baseline"|"infusion"|"recovery"|"discharged"} Phase */
/** @typedef {{value: number, ts: number}} Sample */
/** @typedef {{running: boolean, rate_ml_h: number, infused_ml: number, ts?: number}} Pump */
/** @typedef {{low?: number|null, high?: number|null}} LimitOverride */

/**
 * @typedef {object} SessionFrame
 * @property {string} chair
 * @property {"phase"|"limits"|"details"|"discharge_ready"} change
 * @property {Phase} phase
 * @property {Phase} [previous]
 * @property {string} [patient]
 * @property {number} [session_number]
 * @property {number} [session_count]
 * @property {"iv"|"im"|"sublingual"|"intranasal"} route
 * @property {number} phase_since
 * @property {number} [infusion_started]
 * @property {Partial<Record<Vital, number>>} baseline
 * @property {Record<string, LimitOverride>} limits
 * @property {boolean} discharge_ready
 * @property {string} [by]
 * @property {number} at
 * @property {number} [seq]
 */

/**
 * @typedef {object} AlarmFrame
 * @property {number} [seq]
 * @property {number} id
 * @property {"raised"|"acknowledged"|"cleared"} state
 * @property {string} chair
 * @property {"physiological"|"technical"} kind
 * @property {Vital} [vital]
 * @property {string} rule
 * @property {"low"|"high"} condition
 * @property {number} value
 * @property {number} limit
 * @property {Priority} priority
 * @property {string} message
 * @property {boolean} latching
 * @property {number} ts
 * @property {number} received_at
 * @property {number} raised_ts
 * @property {boolean} escalated
 * @property {number} escalation_level
 * @property {boolean} reminder
 * @property {string} [reason]
 * @property {string} [acknowledged_by]
 * @property {{rule: string, priority: Priority, value: number, limit: number}[]} [rules]
 *   every rule the alarm holds, highest priority first (one alarm per vital and
 *   direction, or per probe)
 * @property {boolean} [updated] rules joined or left the open alarm
 * @property {Priority} [previous_priority] on an update that changed the priority
 * @property {{phase?: Phase, patient?: string}} [context]
 * @property {boolean} [simulated] a chair of the simulated site
 */

/**
 * Whether alarm `a` holds a rule matching `test` (its own rule, or any it holds).
 * @param {AlarmFrame} a
 * @param {(rule: string) => boolean} test
 */
export function holdsRule(a, test) {
  return test(a.rule) || (a.rules ?? []).some((r) => test(r.rule));
}

/**
 * @typedef {object} ChairFrame
 * @property {string} chair
 * @property {string} site
 * @property {number} [received_at]
 * @property {Partial<Record<Vital, Sample>>} vitals
 * @property {Pump} [pump]
 * @property {SessionFrame} [session]
 */

/**
 * @typedef {object} SnapshotFrame
 * @property {string} instance
 * @property {number} seq
 * @property {ChairFrame[]} chairs
 * @property {AlarmFrame[]} alarms
 */

/**
 * @typedef {object} Chair
 * @property {string} key
 * @property {string} site
 * @property {number} receivedAt
 * @property {Partial<Record<Vital, Sample>>} vitals
 * @property {Pump|null} pump
 * @property {SessionFrame|null} session
 * @property {{sbp: number[], spo2: number[]}} trend  flat [ts, value, ts, value, ...]
 */

/** How far back the trend drawings reach, ms. */
export const TREND_MS = 15 * 60_000;
/** Fewest ms between two trend samples of one vital (SpO2 comes every second). */
const TREND_STEP_MS = 2_000;

export const PRIORITY_RANK = /** @type {const} */ ({ high: 3, medium: 2, low: 1 });

/** The site whose chairs are simulated (`vitalgate demo`): never a real patient. */
export const SIMULATED_SITE = "demo";

/**
 * @param {string} a chair key
 * @param {string} b chair key
 */
export function compareChairs(a, b) {
  return a.localeCompare(b, undefined, { numeric: true });
}

/**
 * Alarms in the order a nurse must see them: unacknowledged first, then priority,
 * then the most recent.
 * @param {AlarmFrame} a
 * @param {AlarmFrame} b
 */
export function compareAlarms(a, b) {
  const unacked = Number(b.state === "raised") - Number(a.state === "raised");
  if (unacked !== 0) return unacked;
  const rank = PRIORITY_RANK[b.priority] - PRIORITY_RANK[a.priority];
  return rank !== 0 ? rank : b.raised_ts - a.raised_ts;
}

/**
 * The highest priority among alarms, or null for none.
 * @param {AlarmFrame[]} alarms
 * @returns {Priority|null}
 */
export function highestPriority(alarms) {
  /** @type {Priority|null} */
  let top = null;
  for (const a of alarms) if (top === null || PRIORITY_RANK[a.priority] > PRIORITY_RANK[top]) top = a.priority;
  return top;
}

export class Ward {
  constructor() {
    /** @type {Map<string, Chair>} */
    this.chairs = new Map();
    /** @type {Map<number, AlarmFrame>} */
    this.alarms = new Map();
    /** The last event seq applied (for `since`). @type {number|null} */
    this.seq = null;
    /** @type {string|null} */
    this.instance = null;
  }

  /**
   * @param {string} key
   * @param {string} site
   * @returns {Chair}
   */
  chair(key, site) {
    let c = this.chairs.get(key);
    if (!c) {
      c = { key, site, receivedAt: 0, vitals: {}, pump: null, session: null, trend: { sbp: [], spo2: [] } };
      this.chairs.set(key, c);
    }
    return c;
  }

  /**
   * A snapshot: the chairs it lists and exactly its alarms. With `replace` (after
   * `missed`: the station may have missed anything) every chair starts again from
   * it; otherwise (a refresh) a value is kept where live vitals brought a newer one.
   * Returns the keys of chairs that left.
   * @param {SnapshotFrame} s
   * @param {boolean} replace
   * @returns {string[]}
   */
  applySnapshot(s, replace) {
    this.instance = s.instance;
    this.seq = s.seq;
    const listed = new Set(s.chairs.map((c) => c.chair));
    const gone = [...this.chairs.keys()].filter((k) => replace || !listed.has(k));
    for (const k of gone) this.chairs.delete(k);
    for (const c of s.chairs) {
      this.applyVitals(c, true);
      if (c.session) this.chair(c.chair, c.site).session = c.session;
    }
    this.alarms.clear();
    for (const a of s.alarms) this.alarms.set(a.id, a);
    return gone.filter((k) => !listed.has(k));
  }

  /**
   * One alarm transition.
   * @param {AlarmFrame} a
   */
  applyAlarm(a) {
    if (a.seq !== undefined) this.seq = a.seq;
    if (a.state === "cleared") this.alarms.delete(a.id);
    else this.alarms.set(a.id, a);
    this.chair(a.chair, siteOf(a.chair));
  }

  /** @param {SessionFrame} s */
  applySession(s) {
    if (s.seq !== undefined) this.seq = s.seq;
    const c = this.chair(s.chair, siteOf(s.chair));
    // Another patient, or the chair idle: the trend (the station's own) starts
    // again. The values go with the gateway's emptied frame, not here: the new
    // patient's first reading may come before this frame (events are released
    // after their journal commit, live vitals at once).
    const before = c.session;
    if (s.phase === "idle" || (before && before.patient !== s.patient)) {
      c.trend.sbp.length = 0;
      c.trend.spo2.length = 0;
    }
    c.session = s;
  }

  /**
   * A chair's latest values: live vitals, or (`fromSnapshot`) a snapshot entry.
   * @param {ChairFrame} f
   * @param {boolean} [fromSnapshot]
   */
  applyVitals(f, fromSnapshot = false) {
    const c = this.chair(f.chair, f.site);
    // A live frame is the gateway's newest (it orders by the device's seq, so a
    // device clock stepped back still counts) and is taken as it is. A snapshot's
    // values are read just before its alarms and may be older than live frames
    // already applied: there the newer device time wins.
    if (fromSnapshot && f.received_at !== undefined && f.received_at < c.receivedAt) return;
    c.receivedAt = Math.max(c.receivedAt, f.received_at ?? 0);
    // A frame with no value at all is the gateway forgetting the chair's
    // (another patient, or the chair idle). A frame lacking some is not: after a
    // cluster takeover without the chair's copy, the next owner knows only
    // what has come since, and an older value stays, shown with its age.
    // Live frames only: a refreshing snapshot read before the new patient's
    // first reading (its `received_at` may be absent) must not take it away.
    if (!fromSnapshot && Object.keys(f.vitals).length === 0 && !f.pump) {
      forget(c);
      return;
    }
    for (const [name, sample] of Object.entries(f.vitals)) {
      const v = /** @type {Vital} */ (name);
      if (!sample) continue;
      const old = c.vitals[v];
      if (fromSnapshot && old && old.ts > sample.ts) continue;
      c.vitals[v] = sample;
      if (v === "sbp" || v === "spo2") addTrend(c.trend[v], sample);
    }
    if (f.pump && !(fromSnapshot && c.pump && (c.pump.ts ?? 0) > (f.pump.ts ?? 0))) c.pump = f.pump;
  }

  /**
   * The active alarms of one chair, most urgent first.
   * @param {string} key
   */
  alarmsOf(key) {
    return [...this.alarms.values()].filter((a) => a.chair === key).sort(compareAlarms);
  }

  /** Every active alarm, most urgent first. */
  activeAlarms() {
    return [...this.alarms.values()].sort(compareAlarms);
  }

  /** How many chairs on the ward are simulated. */
  simulatedChairs() {
    let n = 0;
    for (const c of this.chairs.values()) if (c.site === SIMULATED_SITE) n += 1;
    return n;
  }

  /**
   * Whether chair `key` is simulated.
   * @param {string} key
   */
  isSimulated(key) {
    return this.chairs.get(key)?.site === SIMULATED_SITE;
  }
}

/** @param {string} key */
export function siteOf(key) {
  const i = key.indexOf("/");
  return i < 0 ? key : key.slice(0, i);
}

/**
 * The previous patient's values, pump and trends leave chair `c`.
 * @param {Chair} c
 */
function forget(c) {
  c.vitals = {};
  c.pump = null;
  c.trend.sbp.length = 0;
  c.trend.spo2.length = 0;
}

/**
 * Append to a flat [ts, value, ...] trend, thinning to one sample per TREND_STEP_MS
 * (the same sample repeated in coalesced frames adds nothing) and dropping what is
 * older than TREND_MS behind the newest.
 * @param {number[]} t
 * @param {Sample} s
 */
function addTrend(t, s) {
  // The device clock stepped back: the old line no longer fits the time axis.
  if (t.length >= 2 && s.ts < t[t.length - 2] - TREND_STEP_MS) t.length = 0;
  const n = t.length;
  if (n >= 2 && s.ts - t[n - 2] < TREND_STEP_MS) {
    // Keep the extreme of the step: a dip must not vanish in the thinning.
    t[n - 1] = Math.min(t[n - 1], s.value);
    return;
  }
  t.push(s.ts, s.value);
  let drop = 0;
  while (drop < t.length && t[drop] < s.ts - TREND_MS) drop += 2;
  if (drop > 0) t.splice(0, drop);
}
