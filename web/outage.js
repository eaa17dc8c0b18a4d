// What a station could not show while it was not connected. On reconnecting it
// is sent the events it missed, and an alarm that was raised and ended meanwhile
// (or ended while it was away) is applied and gone before any tile is drawn:
// this keeps the alarms that ended in the gap, so that the station can say so.
// Pure state: no DOM, no socket. Times are the gateway's (ms since the epoch).

/** @typedef {import("./ward.js").AlarmFrame} AlarmFrame */

export class Outage {
  constructor() {
    /** The current or last gap: from its start to its end (null while it lasts). @type {{from: number, to: number|null}|null} */
    this.gap = null;
    /** Alarms that ended within the gap, not yet told. @type {AlarmFrame[]} */
    this.ended = [];
  }

  /**
   * The connection's state: `connected`, and if not, since when (gateway time).
   * @param {boolean} connected
   * @param {number} downSince
   * @param {number} now
   */
  status(connected, downSince, now) {
    if (!connected && (this.gap === null || this.gap.to !== null)) {
      this.gap = { from: downSince, to: null };
      this.ended = [];
    } else if (connected && this.gap !== null && this.gap.to === null) {
      this.gap.to = now;
    }
  }

  /**
   * An alarm frame, before it is applied: `known` is the alarm as the station
   * held it (raised or acknowledged), if it did. Kept (as it was known, which
   * names what it was about, not the value it ended on) when it ended within the
   * gap.
   * @param {AlarmFrame} a
   * @param {AlarmFrame|undefined} known
   * @returns {boolean} whether it was kept
   */
  alarm(a, known) {
    const g = this.gap;
    if (g === null || a.state !== "cleared" || a.received_at < g.from || (g.to !== null && a.received_at > g.to)) return false;
    this.ended.push(known ?? a);
    return true;
  }

  /**
   * The alarms kept, once: the gap and what ended in it.
   * @returns {{from: number, to: number, ended: AlarmFrame[]}|null}
   */
  take() {
    if (this.gap === null || this.gap.to === null || this.ended.length === 0) return null;
    const told = { from: this.gap.from, to: this.gap.to, ended: this.ended };
    this.ended = [];
    return told;
  }
}
