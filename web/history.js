// The alarm history, from the audit trail (`GET /api/alarms`): one row per alarm
// with when it was raised, the chair, the highest priority it reached with its
// message and the value against the limit then, who
// acknowledged it and when, and when it cleared. Filterable by chair.

import { PRIORITY_TEXT, clock, dateTime, el, formatValue } from "./format.js";
import { PRIORITY_RANK, SIMULATED_SITE, siteOf } from "./ward.js";

/** @typedef {import("./ward.js").AlarmFrame} AlarmFrame */

/** How far back the panel reads, ms. */
const WINDOW_MS = 24 * 3600_000;
/** Most events read at once. */
const LIMIT = 2000;

/**
 * @typedef {object} HistoryRow
 * @property {AlarmFrame} raised
 * @property {AlarmFrame} worst  the event at the highest priority it reached
 * @property {AlarmFrame|null} acked
 * @property {AlarmFrame|null} cleared
 * @property {number} escalation
 */

export class AlarmHistory {
  /**
   * @param {(path: string) => Promise<Response>} get  an authenticated GET
   * @param {() => string[]} chairs  chair keys to offer in the filter
   * @param {() => boolean} everySite  whether the user may read every chair at once
   *   (a token limited to some sites must name a chair: docs/protocol.md)
   */
  constructor(get, chairs, everySite) {
    this.get = get;
    this.chairs = chairs;
    this.everySite = everySite;
    /** The latest load: an older one finishing later is dropped. */
    this.loads = 0;
    this.panel = /** @type {HTMLElement} */ (document.getElementById("history"));
    this.filter = /** @type {HTMLSelectElement} */ (document.getElementById("history-chair"));
    this.rows = /** @type {HTMLElement} */ (document.getElementById("history-rows"));
    this.note = /** @type {HTMLElement} */ (document.getElementById("history-note"));
    this.filter.addEventListener("change", () => this.load());
    /** @type {HTMLElement} */ (document.getElementById("history-refresh")).addEventListener("click", () => this.load());
    /** @type {HTMLElement} */ (document.getElementById("history-close")).addEventListener("click", () => this.toggle(false));
  }

  /** @param {boolean} [show] */
  toggle(show) {
    this.panel.hidden = show === undefined ? !this.panel.hidden : !show;
    if (!this.panel.hidden) {
      this.fillFilter();
      this.load();
    }
  }

  fillFilter() {
    const chosen = this.filter.value;
    this.filter.replaceChildren();
    if (this.everySite()) {
      const all = el("option", "", "All chairs");
      all.value = "";
      this.filter.append(all);
    }
    for (const k of this.chairs()) {
      const o = el("option", "", k);
      o.value = k;
      this.filter.append(o);
    }
    this.filter.value = chosen;
    if (this.filter.selectedIndex < 0) this.filter.selectedIndex = 0;
  }

  async load() {
    const load = ++this.loads;
    const params = new URLSearchParams({ from: String(Date.now() - WINDOW_MS), limit: String(LIMIT) });
    if (this.filter.value) params.set("chair", this.filter.value);
    this.note.textContent = "Loading…";
    let body;
    try {
      const r = await this.get(`/api/alarms?${params}`);
      body = await r.json();
      if (!r.ok) throw new Error(body.error ?? r.statusText);
    } catch (e) {
      if (load !== this.loads) return;
      // Rows of an earlier read (maybe another chair) would pass for the answer.
      this.rows.replaceChildren();
      this.note.textContent = `Could not read the history: ${e instanceof Error ? e.message : e}`;
      return;
    }
    if (load !== this.loads) return;
    const rows = group(/** @type {AlarmFrame[]} */ (body.alarms));
    this.rows.replaceChildren(...rows.map(row));
    // The panel does not follow live events: say when it was read.
    this.note.textContent = `${rows.length} alarms in the last 24 h${body.truncated ? " (only the oldest shown: narrow by chair)" : ""}, as of ${clock(Date.now())}.`;
  }
}

/**
 * Events → one row per alarm, newest first.
 * @param {AlarmFrame[]} events
 * @returns {HistoryRow[]}
 */
export function group(events) {
  /** @type {Map<number, HistoryRow>} */
  const byId = new Map();
  for (const e of events) {
    let r = byId.get(e.id);
    if (!r) {
      r = { raised: e, worst: e, acked: null, cleared: null, escalation: 0 };
      byId.set(e.id, r);
    }
    // The row shows the alarm at its worst, and who acknowledged it at that
    // priority: an acknowledgement at a lower one was not of the worst.
    if (e.state !== "cleared" && PRIORITY_RANK[e.priority] > PRIORITY_RANK[r.worst.priority]) {
      r.worst = e;
      r.acked = null;
    }
    if (e.state === "acknowledged" && !e.reminder && !e.updated && !r.acked && e.priority === r.worst.priority) r.acked = e;
    if (e.state === "cleared") r.cleared = e;
    r.escalation = Math.max(r.escalation, e.escalation_level);
  }
  return [...byId.values()].sort((a, b) => b.raised.raised_ts - a.raised.raised_ts);
}

/** @param {HistoryRow} r */
function row(r) {
  const a = r.worst;
  const tr = el("tr");
  tr.dataset.priority = a.priority;
  const p = PRIORITY_TEXT[a.priority];
  const valueVsLimit = a.kind === "technical" ? `${formatValue(a.value)} s (allowed ${formatValue(a.limit)} s)` : `${formatValue(a.value)} ${a.condition === "low" ? "<" : ">"} ${formatValue(a.limit)}`;
  tr.append(
    el("td", "", dateTime(r.raised.raised_ts)),
    el("td", "", a.simulated || siteOf(a.chair) === SIMULATED_SITE ? `${a.chair} (SIMULATED)` : a.chair),
    el("td", "prio", `${p.symbol} ${p.word}`),
    el("td", "", a.message),
    el("td", "", valueVsLimit),
    el("td", "", r.acked ? `${r.acked.acknowledged_by ?? "?"} at ${dateTime(r.acked.received_at)}` : "not acknowledged"),
    el("td", "", r.cleared ? `${dateTime(r.cleared.received_at)}${r.cleared.reason ? ` (${r.cleared.reason})` : ""}` : "active"),
    el("td", "", r.escalation > 0 ? String(r.escalation) : ""),
  );
  return tr;
}
