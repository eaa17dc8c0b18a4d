// The station header and banners: the ward's highest active alarm, counts per
// priority, audio state, the not-connected banner, the lag banner and the
// SIMULATED banner. Every state is in words, not colour alone.

import { PRIORITY_TEXT, clock, formatAge, setText } from "./format.js";
import { PAUSE_MS } from "./audio.js";

/** @typedef {import("./ward.js").Ward} Ward */
/** @typedef {import("./audio.js").AlarmAudio} AlarmAudio */
/** @typedef {import("./connection.js").Status} Status */

/** A station clock or data this far behind the gateway is called out, ms. */
export const LAG_WARN_MS = 5_000;

/**
 * @param {string} id
 * @returns {HTMLElement}
 */
export function byId(id) {
  const e = document.getElementById(id);
  if (!e) throw new Error(`#${id} missing from index.html`);
  return e;
}

export class StationHeader {
  constructor() {
    this.top = byId("top-alarm");
    this.topSymbol = byId("top-symbol");
    this.topText = byId("top-text");
    this.counts = {
      high: byId("count-high"),
      medium: byId("count-medium"),
      low: byId("count-low"),
    };
    this.audioOff = byId("audio-off");
    this.pause = /** @type {HTMLButtonElement} */ (byId("audio-pause"));
    this.clock = byId("clock");
    this.down = byId("disconnected-banner");
    this.downText = byId("disconnected-text");
    this.downFor = byId("disconnected-for");
    this.lag = byId("lag-banner");
    this.lagText = byId("lag-text");
    this.lagFor = byId("lag-for");
    this.simulated = byId("simulated-banner");
  }

  /**
   * @param {Ward} ward
   * @param {AlarmAudio} audio
   * @param {Status} status
   * @param {number} clockOffsetMs  the gateway's clock minus this station's
   * @param {number} dataLagMs  how late the newest data arrives, on the gateway's clock
   */
  render(ward, audio, status, clockOffsetMs, dataLagMs) {
    const alarms = ward.activeAlarms();
    const top = alarms[0];
    // Not connected, what the station holds is the past: never an all-clear.
    const live = status.connected;
    if (top) {
      const p = PRIORITY_TEXT[top.priority];
      this.top.dataset.priority = top.priority;
      this.top.dataset.flashing = top.state === "raised" ? top.priority : "none";
      setText(this.topSymbol, `${p.symbol} ${p.word}`);
      const simulated = ward.isSimulated(top.chair) ? " (SIMULATED)" : "";
      setText(this.topText, `${live ? "" : "LAST KNOWN: "}Chair ${top.chair}${simulated}: ${top.message}${top.state === "acknowledged" ? " (acknowledged)" : ""}`);
    } else {
      this.top.dataset.priority = "none";
      this.top.dataset.flashing = "none";
      setText(this.topSymbol, live ? "" : "?");
      setText(this.topText, live ? "No active alarms" : "Alarm state unknown: not connected");
    }
    // Beside real chairs, the counts say how many of their alarms are simulated.
    const simulatedChairs = ward.simulatedChairs();
    const mixed = simulatedChairs > 0 && simulatedChairs < ward.chairs.size;
    for (const p of /** @type {const} */ (["high", "medium", "low"])) {
      const of = alarms.filter((a) => a.priority === p);
      const n = of.length;
      const unacked = of.filter((a) => a.state === "raised").length;
      const simulated = mixed ? of.filter((a) => ward.isSimulated(a.chair)).length : 0;
      const e = this.counts[p];
      e.dataset.count = String(n);
      setText(e, `${PRIORITY_TEXT[p].symbol} ${PRIORITY_TEXT[p].word} ${live ? "" : "last known "}${n}${unacked < n ? ` (${n - unacked} ack)` : ""}${simulated > 0 ? `, ${simulated} simulated` : ""}`);
    }

    this.audioOff.hidden = audio.armed;
    if (audio.paused) {
      const left = Math.ceil((audio.pausedUntil - Date.now()) / 1000);
      setText(this.pause, `AUDIO PAUSED ${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")} — resume`);
      this.pause.dataset.paused = "true";
    } else {
      setText(this.pause, `Audio pause ${PAUSE_MS / 60_000} min`);
      this.pause.dataset.paused = "false";
    }
    this.pause.disabled = !audio.armed;

    setText(this.clock, clock(Date.now()));
    this.down.hidden = status.connected;
    document.body.dataset.connected = String(status.connected);
    if (!status.connected) {
      const since = status.downSince ?? Date.now();
      // The alert changes with the outage's start and cause only; the running time
      // and the attempts beside it change every second and are not announced.
      setText(this.downText, `NOT CONNECTED — alarms are NOT being received since ${clock(since)}. ${capital(status.detail)}.`);
      setText(this.downFor, `For ${formatAge(Date.now() - since)}. Retrying${status.attempts > 1 ? ` (attempt ${status.attempts})` : ""}…`);
    }
    // The clock offset is measured at sign-in: its words are stable. How late data
    // arrives changes with every frame: the alert says that it is late, the figure
    // is beside it.
    /** @type {string[]} */
    const lags = [];
    if (clockOffsetMs > LAG_WARN_MS) lags.push(`This station's clock is ${formatAge(clockOffsetMs)} behind the gateway's.`);
    if (clockOffsetMs < -LAG_WARN_MS) lags.push(`This station's clock is ${formatAge(-clockOffsetMs)} ahead of the gateway's.`);
    const late = status.connected && dataLagMs > LAG_WARN_MS;
    if (late) lags.push("Data is arriving late: what you see may be behind the patients.");
    this.lag.hidden = lags.length === 0;
    if (lags.length > 0) setText(this.lagText, `${lags.join(" ")} Tell IT.`);
    setText(this.lagFor, late ? `Data is ${formatAge(dataLagMs)} old on arrival.` : "");
    this.simulated.hidden = simulatedChairs === 0;
    if (simulatedChairs > 0) {
      const one = simulatedChairs === 1;
      setText(
        this.simulated,
        !mixed
          ? "SIMULATED WARD — demo patients, not real people. No alarm here concerns a patient."
          : `${simulatedChairs} SIMULATED ${one ? "chair" : "chairs"} (marked on ${one ? "its tile" : "their tiles"}) — every other chair is real.`,
      );
    }
  }
}

/** @param {string} s */
function capital(s) {
  return s.charAt(0).toUpperCase() + s.slice(1);
}
