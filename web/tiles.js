// The ward grid: one tile per chair, readable from a few metres at 1080p.
//
// A tile shows its chair's highest active alarm priority as colour AND as text and
// symbols; it flashes (IEC 60601-1-8: high about 2 Hz, medium about 0.6 Hz, 50 %
// on) while any of its alarms is unacknowledged, and is steady once all are
// acknowledged. Several alarms rotate in the alarm strip every ROTATE_MS (the
// line under the chair's name names the highest priority while its alarms
// differ). Values
// older than their allowance show as stale, never as current.
//
// Tiles are built once per chair and updated in place, in one animation frame per
// batch of changes (`Grid.render`), so 40 chairs at 1 Hz cost little main-thread time.

import { PRIORITY_TEXT, VITALS, el, formatAge, formatMinutes, formatValue, setText } from "./format.js";
import { SIMULATED_SITE, TREND_MS, compareChairs, highestPriority, holdsRule } from "./ward.js";

/** @typedef {import("./ward.js").Ward} Ward */
/** @typedef {import("./ward.js").Chair} Chair */
/** @typedef {import("./ward.js").Vital} Vital */
/** @typedef {import("./ward.js").AlarmFrame} AlarmFrame */

/** Several alarms on one tile take turns in its strip this long each (Philips: 2 s). */
export const ROTATE_MS = 2_000;

/** How often a tile's trend drawings are redrawn, ms. */
const TREND_REDRAW_MS = 10_000;
/** An SBP and a DBP this close in device time are one cuff measurement (a cuff
 * cycle takes 20-40 s, and the shortest automatic interval is a minute). */
const SAME_CUFF_MS = 10_000;

/** Numerics in the order of a bedside monitor. */
const NUMERICS = /** @type {const} */ (["hr", "spo2", "nibp", "rr", "etco2", "pump"]);

/** Trend drawings: vital, range drawn, and the y of each grid line. */
const TRENDS = /** @type {const} */ ([
  { vital: "sbp", min: 60, max: 200, grid: [100, 140, 180] },
  { vital: "spo2", min: 80, max: 100, grid: [90, 95] },
]);

/**
 * @typedef {object} Tile
 * @property {HTMLElement} root
 * @property {HTMLElement} patient
 * @property {HTMLElement} phase
 * @property {HTMLElement} course
 * @property {HTMLElement} route
 * @property {HTMLElement} minutes
 * @property {HTMLButtonElement} strip
 * @property {HTMLElement} stripSymbol
 * @property {HTMLElement} stripText
 * @property {HTMLElement} stripCount
 * @property {HTMLElement} topPriority
 * @property {HTMLElement} ready
 * @property {Record<string, {box: HTMLElement, value: HTMLElement, base: HTMLElement, note: HTMLElement}>} nums
 * @property {HTMLCanvasElement[]} trends
 * @property {number} trendDrawnAt
 */

/**
 * @typedef {object} GridOptions
 * @property {HTMLElement} container
 * @property {(chair: string) => void} onAck  acknowledge the chair's unacknowledged alarms
 * @property {() => boolean} mayAck  whether the signed-in role may acknowledge
 * @property {(chair: string) => void} onOpen  open the chair's controls
 * @property {(vital: Vital) => number} staleAfterMs  how old a value may be before it is stale
 * @property {() => number} now  gateway time, ms
 */

export class Grid {
  /** @param {GridOptions} o */
  constructor(o) {
    this.o = o;
    /** @type {Map<string, Tile>} */
    this.tiles = new Map();
    /** The unacknowledged alarm ids each tile showed when last drawn. @type {Map<string, number[]>} */
    this.shown = new Map();
    this.empty = el("p", "empty-ward", "No chairs yet. Chairs appear as soon as their devices publish or a session starts.");
    o.container.append(this.empty);
    new ResizeObserver(() => this.layout()).observe(o.container);
  }

  /**
   * Bring the tiles of `keys` (all when null) up to date with the ward.
   * @param {Ward} ward
   * @param {Set<string>|null} keys
   */
  render(ward, keys) {
    let added = false;
    for (const [key, tile] of this.tiles) {
      if (!ward.chairs.has(key)) {
        tile.root.remove();
        this.tiles.delete(key);
        this.shown.delete(key);
        added = true;
      }
    }
    for (const key of keys ?? ward.chairs.keys()) {
      const chair = ward.chairs.get(key);
      if (!chair) continue;
      let tile = this.tiles.get(key);
      if (!tile) {
        tile = this.build(chair);
        // In the page before its first update, so that its trends have a size to
        // be drawn at; `order` puts it in its place.
        this.o.container.append(tile.root);
        this.tiles.set(key, tile);
        added = true;
      }
      this.update(tile, chair, ward);
    }
    if (added) this.order();
  }

  /**
   * The unacknowledged alarms of a chair as its tile last showed them (what a nurse
   * who acts on the tile has seen).
   * @param {string} key
   */
  shownUnacknowledged(key) {
    return this.shown.get(key) ?? [];
  }

  /** Put tiles in chair order and size the grid for their number. */
  order() {
    const keys = [...this.tiles.keys()].sort(compareChairs);
    for (const k of keys) this.o.container.append(/** @type {Tile} */ (this.tiles.get(k)).root);
    this.empty.hidden = keys.length > 0;
    this.layout();
  }

  /** Columns and rows that make tiles as large as the screen allows. */
  layout() {
    const n = Math.max(1, this.tiles.size);
    const { clientWidth: w, clientHeight: h } = this.o.container;
    // Tiles about 4:3; try every column count and keep the largest tile.
    let best = { cols: 1, size: 0 };
    for (let cols = 1; cols <= n; cols++) {
      const rows = Math.ceil(n / cols);
      const size = Math.min(w / cols / 4, h / rows / 3);
      if (size > best.size) best = { cols, size };
    }
    this.o.container.style.setProperty("--cols", String(best.cols));
    this.o.container.style.setProperty("--rows", String(Math.ceil(n / best.cols)));
  }

  /**
   * @param {Chair} chair
   * @returns {Tile}
   */
  build(chair) {
    const root = el("article", "tile");
    root.dataset.chair = chair.key;
    root.tabIndex = 0;
    const head = el("header", "tile-head");
    const name = el("span", "chair-name", `Chair ${chair.key.slice(chair.site.length + 1)}`);
    const site = el("span", "site", chair.site);
    head.append(name, site);
    if (chair.site === SIMULATED_SITE) head.append(el("span", "simulated-tag", "SIMULATED"));
    const patient = el("span", "patient");
    const phase = el("span", "phase");
    const course = el("span", "course");
    // Kept on the smallest tiles, unlike the session count: IV or IM matters.
    const route = el("span", "route");
    const minutes = el("span", "minutes");
    const open = el("button", "open", "Chair ▸");
    open.type = "button";
    open.title = "Session and limits";
    open.addEventListener("click", () => this.o.onOpen(chair.key));
    head.append(patient, open);
    const sub = el("div", "tile-sub");
    // The chair's highest priority in words, steady, while its alarms differ in
    // priority: the strip takes turns, and the tile's colour must not be the only
    // cue. First on the line under the name, which the head's id and button keep.
    const topPriority = el("span", "top-priority");
    topPriority.title = "This chair's highest alarm priority";
    topPriority.hidden = true;
    sub.append(topPriority, phase, route, course, minutes);

    const strip = el("button", "alarm-strip");
    strip.type = "button";
    const stripSymbol = el("span", "symbol");
    const stripText = el("span", "text");
    const stripCount = el("span", "count");
    strip.append(stripSymbol, stripText, stripCount);
    strip.addEventListener("click", () => this.o.onAck(chair.key));

    const numerics = el("div", "numerics");
    /** @type {Tile["nums"]} */
    const nums = {};
    for (const n of NUMERICS) {
      const box = el("div", "num");
      box.dataset.vital = n;
      const label = n === "nibp" ? "NIBP" : n === "pump" ? "Pump" : VITALS[n].label;
      const value = el("span", "value", "–");
      const base = el("span", "base");
      const note = el("span", "note");
      box.append(el("span", "label", label), value, base, note);
      numerics.append(box);
      nums[n] = { box, value, base, note };
    }
    const trendBox = el("div", "trends");
    const trends = TRENDS.map((t) => {
      const c = el("canvas", "trend");
      c.dataset.vital = t.vital;
      c.setAttribute("aria-label", `${VITALS[t.vital].label}, last 15 minutes`);
      trendBox.append(c);
      return c;
    });
    const ready = el("div", "ready", "✓ READY FOR DISCHARGE");
    ready.hidden = true;
    root.append(head, sub, strip, numerics, trendBox, ready);
    root.addEventListener("keydown", (e) => {
      if (e.target !== root) return;
      if (e.key === "a" || e.key === "A" || e.key === "Enter") {
        e.preventDefault();
        this.o.onAck(chair.key);
      } else if (e.key === "o" || e.key === "O") {
        this.o.onOpen(chair.key);
      }
    });
    return { root, patient, phase, course, route, minutes, strip, stripSymbol, stripText, stripCount, topPriority, ready, nums, trends, trendDrawnAt: 0 };
  }

  /**
   * @param {Tile} t
   * @param {Chair} chair
   * @param {Ward} ward
   */
  update(t, chair, ward) {
    const now = this.o.now();
    const s = chair.session;
    const phase = s?.phase ?? "idle";
    t.root.dataset.phase = phase;
    // An idle chair is empty, whoever an idle message names (the patient who left).
    setText(t.patient, phase === "idle" ? "empty" : s?.patient ?? "");
    setText(t.phase, phase.toUpperCase());
    setText(t.course, s?.session_number ? `session ${s.session_number}${s.session_count ? ` of ${s.session_count}` : ""}` : "");
    setText(t.route, s && phase !== "idle" ? s.route.toUpperCase() : "");
    let minutes = "";
    if (s && phase === "infusion") minutes = `${formatMinutes(now - (s.infusion_started ?? s.phase_since))} into infusion`;
    else if (s && (phase === "recovery" || phase === "baseline")) minutes = `${formatMinutes(now - s.phase_since)} in ${phase}`;
    setText(t.minutes, minutes);
    t.ready.hidden = !(phase === "recovery" && s?.discharge_ready);

    // Alarms: colour, flashing, the rotating strip.
    const alarms = ward.alarmsOf(chair.key);
    const top = highestPriority(alarms) ?? "none";
    const unacked = alarms.filter((a) => a.state === "raised");
    this.shown.set(chair.key, unacked.map((a) => a.id));
    const flashing = unacked.length > 0 ? unacked[0].priority : "none";
    t.root.dataset.priority = top;
    t.root.dataset.flashing = flashing;
    t.root.dataset.alarms = String(alarms.length);
    const mixed = top !== "none" && alarms.some((a) => a.priority !== top);
    t.topPriority.hidden = !mixed;
    if (mixed) {
      t.topPriority.dataset.priority = top;
      setText(t.topPriority, `${PRIORITY_TEXT[top].symbol} ${PRIORITY_TEXT[top].word}`);
    }
    if (alarms.length === 0) {
      t.strip.hidden = true;
    } else {
      t.strip.hidden = false;
      const shown = alarms[Math.floor(Date.now() / ROTATE_MS) % alarms.length];
      const p = PRIORITY_TEXT[shown.priority];
      t.strip.dataset.priority = shown.priority;
      t.strip.dataset.state = shown.state;
      t.strip.dataset.alarmId = String(shown.id);
      setText(t.stripSymbol, `${p.symbol} ${p.word}`);
      const tags = [shown.kind === "technical" ? "technical" : "", shown.state === "acknowledged" ? `ACK ${shown.acknowledged_by ?? ""}`.trim() : "", shown.reminder ? "REMINDER: still active" : "", shown.escalated || shown.escalation_level > 0 ? `escalated ${shown.escalation_level}` : ""].filter(Boolean);
      const ack = shown.state === "acknowledged" ? "✓ " : "";
      setText(t.stripText, `${ack}${shown.message}${tags.length ? ` (${tags.join(", ")})` : ""}`);
      setText(t.stripCount, alarms.length > 1 ? `${alarms.indexOf(shown) + 1}/${alarms.length}` : "");
      const mayAck = this.o.mayAck();
      const which = unacked.length === 1 ? "its unacknowledged alarm" : `all ${unacked.length} of its unacknowledged alarms`;
      t.strip.title = !unacked.length ? "Acknowledged" : mayAck ? `Click, or press A on the tile, to acknowledge ${which}` : "Your role may not acknowledge alarms";
      // Left enabled for a role that may not acknowledge: a click says so, where a
      // disabled strip would look the same and do nothing.
      t.strip.disabled = unacked.length === 0;
    }

    // Numerics, stale or current, with the baseline beside each.
    const offline = alarms.some((a) => holdsRule(a, (r) => r === "device_offline"));
    const staleRules = new Set(alarms.filter((a) => holdsRule(a, (r) => r.endsWith("_stale"))).map((a) => a.vital));
    const staleNote = (/** @type {number} */ age) => (offline ? "DEVICE OFFLINE" : `STALE ${formatAge(age)}`);
    // How long a value has gone without renewal: by device time, or by the gateway's
    // receipt when that is older (a device clock running fast).
    const ageOf = (/** @type {number} */ ts) => Math.max(now - ts, chair.receivedAt > 0 ? now - chair.receivedAt : 0);
    const stale = (/** @type {Vital} */ v) => {
      const sample = chair.vitals[v];
      // Device time, and the gateway's receipt: a device clock running fast must
      // not keep a value current once the chair has gone quiet.
      const allowed = this.o.staleAfterMs(v);
      return offline || staleRules.has(v) || (sample !== undefined && (now - sample.ts > allowed || (chair.receivedAt > 0 && now - chair.receivedAt > allowed)));
    };
    for (const v of /** @type {const} */ (["hr", "spo2", "rr", "etco2"])) {
      const n = t.nums[v];
      const sample = chair.vitals[v];
      showNumeric(n, sample ? formatValue(sample.value) : "–", sample ? stale(v) : false, sample && stale(v) ? staleNote(ageOf(sample.ts)) : "");
      const b = s?.baseline?.[v];
      setText(n.base, b !== undefined ? `base ${formatValue(b)}` : "");
      n.box.hidden = v === "etco2" && !sample;
    }
    {
      const n = t.nums.nibp;
      const sbp = chair.vitals.sbp;
      const dbp = chair.vitals.dbp;
      // A DBP of an earlier cuff cycle than the SBP (a cuff reporting SBP alone),
      // or older than its allowance, is not shown as part of the current
      // measurement. One cycle's two values may come in two messages: a few
      // seconds apart they are still one measurement.
      const dbpOld = dbp !== undefined && ((sbp !== undefined && sbp.ts - dbp.ts > SAME_CUFF_MS) || now - dbp.ts > this.o.staleAfterMs("dbp"));
      const text = sbp ? `${formatValue(sbp.value)}/${dbp && !dbpOld ? formatValue(dbp.value) : "–"}` : "–/–";
      const dbpNote = dbpOld ? ` · DBP ${formatAge(now - dbp.ts)} old` : "";
      showNumeric(n, text, sbp ? stale("sbp") : false, sbp ? (stale("sbp") ? `${staleNote(ageOf(sbp.ts))} (cuff)` : `cuff ${formatMinutes(now - sbp.ts)} ago${dbpNote}`) : "");
      const bs = s?.baseline?.sbp;
      const bd = s?.baseline?.dbp;
      setText(n.base, bs !== undefined ? `base ${formatValue(bs)}/${bd !== undefined ? formatValue(bd) : "–"}` : "");
    }
    {
      const n = t.nums.pump;
      const pump = chair.pump;
      n.box.hidden = !pump && s?.route !== "iv";
      const pumpAllowed = this.o.staleAfterMs("hr") * 4;
      const pumpStale = offline || (pump?.ts !== undefined && ageOf(pump.ts) > pumpAllowed);
      const given = pump ? `ml/h · ${pump.infused_ml.toFixed(1)} ml given` : "";
      showNumeric(n, pump ? (pump.running ? `${pump.rate_ml_h.toFixed(1)}` : "stopped") : "–", pump ? pumpStale : false, pump && pumpStale ? `${staleNote(ageOf(pump.ts ?? now))} · ${given}` : given);
      setText(n.base, "");
    }
    // 15 minutes across: redrawn every TREND_REDRAW_MS (1 % of the axis) is smooth enough.
    if (now - t.trendDrawnAt >= TREND_REDRAW_MS) {
      // A tile not laid out yet (just built) has nothing to draw on: try next time.
      const drawn = TRENDS.map((spec, i) => drawTrend(t.trends[i], chair.trend[spec.vital], spec, now));
      if (drawn.every(Boolean)) t.trendDrawnAt = now;
    }
  }
}

/**
 * @param {{box: HTMLElement, value: HTMLElement, note: HTMLElement}} n
 * @param {string} text
 * @param {boolean} stale
 * @param {string} note
 */
function showNumeric(n, text, stale, note) {
  setText(n.value, text);
  const s = stale ? "true" : "false";
  if (n.box.dataset.stale !== s) n.box.dataset.stale = s;
  setText(n.note, note);
}

/**
 * A 15-minute line of one vital, newest at the right.
 * @param {HTMLCanvasElement} c
 * @param {number[]} points flat [ts, value, ...]
 * @param {{vital: string, min: number, max: number, grid: readonly number[]}} spec
 * @param {number} now
 * @returns {boolean} whether the canvas could be drawn on
 */
function drawTrend(c, points, spec, now) {
  const w = c.clientWidth;
  const h = c.clientHeight;
  if (w === 0 || h === 0) return false;
  const dpr = window.devicePixelRatio || 1;
  if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
    c.width = Math.round(w * dpr);
    c.height = Math.round(h * dpr);
  }
  const g = /** @type {CanvasRenderingContext2D} */ (c.getContext("2d"));
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const y = (/** @type {number} */ v) => h - ((Math.min(spec.max, Math.max(spec.min, v)) - spec.min) / (spec.max - spec.min)) * h;
  const x = (/** @type {number} */ ts) => w - ((now - ts) / TREND_MS) * w;
  g.strokeStyle = "rgba(255,255,255,0.15)";
  g.lineWidth = 1;
  g.beginPath();
  for (const v of spec.grid) {
    g.moveTo(0, y(v));
    g.lineTo(w, y(v));
  }
  g.stroke();
  g.fillStyle = "rgba(255,255,255,0.55)";
  g.font = "bold 12px sans-serif";
  g.fillText(`${VITALS[/** @type {Vital} */ (spec.vital)].label} 15 min`, 3, 13);
  if (points.length < 2) return true;
  g.strokeStyle = spec.vital === "sbp" ? "#f0f0f0" : "#7fd4ff";
  g.lineWidth = 1.5;
  g.beginPath();
  for (let i = 0; i < points.length; i += 2) {
    const px = x(points[i]);
    const py = y(points[i + 1]);
    if (i === 0) g.moveTo(px, py);
    else g.lineTo(px, py);
  }
  g.stroke();
  if (points.length === 2 || spec.vital === "sbp") {
    g.fillStyle = g.strokeStyle;
    for (let i = 0; i < points.length; i += 2) g.fillRect(x(points[i]) - 1.5, y(points[i + 1]) - 1.5, 3, 3);
  }
  return true;
}
