// Alarm sounds, synthesised with the Web Audio API (no sound files).
//
// IEC 60601-1-8 burst patterns: high = 10 pulses (3 + 2, pause, 3 + 2) repeated
// every HIGH_REPEAT_MS; medium = 3 pulses every MEDIUM_REPEAT_MS; low = 1 pulse,
// once per new low alarm. Pulses are 150-1000 Hz tones with harmonics (a
// fundamental and four overtones). Only unacknowledged alarms sound, plus one burst
// for each reminder of an acknowledged one, and the station's own alarm when it has
// lost the gateway.
//
// Browsers start audio only after a user gesture, so the station is "armed" by a
// click and says AUDIO OFF until then. Audio pause silences the station for
// PAUSE_MS; a new alarm of a higher priority than every alarm that was paused
// breaks through. Pausing never touches the visual signals.

/** @typedef {import("./ward.js").Priority} Priority */
/** @typedef {import("./ward.js").AlarmFrame} AlarmFrame */

import { PRIORITY_RANK, highestPriority } from "./ward.js";

/** Vendors' default audio pause (Dräger, GE, Masimo: 2 minutes, with a countdown). */
export const PAUSE_MS = 120_000;
const HIGH_REPEAT_MS = 5_000;
/** The station sounds its own alarm once the gateway has been lost this long... */
export const DISCONNECTED_SOUND_AFTER_MS = 10_000;
/** ...and again this often while it stays lost. */
const DISCONNECTED_REPEAT_MS = 15_000;
const MEDIUM_REPEAT_MS = 10_000;

/** Pulse onsets within a burst (ms) and each pulse's length. */
const BURSTS = /** @type {Record<Priority, {freq: number, onsets: number[], pulseMs: number}>} */ ({
  // 3 + 2, pause, 3 + 2: IEC's high-priority rhythm, about 2.3 s.
  high: { freq: 880, onsets: [0, 150, 300, 600, 750, 1500, 1650, 1800, 2100, 2250], pulseMs: 110 },
  medium: { freq: 660, onsets: [0, 250, 500], pulseMs: 180 },
  low: { freq: 520, onsets: [0], pulseMs: 220 },
});

/**
 * @typedef {object} Burst
 * @property {Priority} priority
 * @property {number} pulses
 * @property {number} at  Date.now() when it started
 * @property {"alarm"|"reminder"|"disconnected"} why
 */

export class AlarmAudio {
  constructor() {
    /** @type {AudioContext|null} */
    this.ctx = null;
    /** @type {PeriodicWave|null} */
    this.wave = null;
    /** Station audio paused until this time (ms), or 0. */
    this.pausedUntil = 0;
    /** Highest priority among the alarms that were sounding when paused (0: none). */
    this.pausedRank = 0;
    /** @type {Map<Priority, number>} when each priority last sounded */
    this.lastBurst = new Map();
    /** When the station last sounded that it has lost the gateway. */
    this.lastDisconnected = 0;
    /** Low alarms already announced (each sounds once). @type {Set<number>} */
    this.announced = new Set();
    /** Every burst played, newest last (bounded), for the station's own checks. @type {Burst[]} */
    this.played = [];
  }

  get armed() {
    return this.ctx !== null && this.ctx.state === "running";
  }

  /** Arm from a user gesture (a click). */
  async arm() {
    if (!this.ctx) {
      this.ctx = new AudioContext();
      // Fundamental plus four harmonics of falling strength.
      const real = new Float32Array([0, 0, 0, 0, 0, 0]);
      const imag = new Float32Array([0, 1, 0.6, 0.45, 0.3, 0.2]);
      this.wave = this.ctx.createPeriodicWave(real, imag);
    }
    if (this.ctx.state !== "running") await this.ctx.resume();
  }

  get paused() {
    return Date.now() < this.pausedUntil;
  }

  /**
   * Pause the station's audio for PAUSE_MS.
   * @param {AlarmFrame[]} sounding  the unacknowledged alarms at this moment
   */
  pause(sounding) {
    this.pausedUntil = Date.now() + PAUSE_MS;
    this.pausedRank = Math.max(0, ...sounding.map((a) => PRIORITY_RANK[a.priority]));
  }

  resume() {
    this.pausedUntil = 0;
    this.pausedRank = 0;
  }

  /**
   * A new alarm was raised: one of higher priority than every paused alarm ends
   * the pause at once.
   * @param {AlarmFrame} a
   */
  raised(a) {
    if (this.paused && PRIORITY_RANK[a.priority] > this.pausedRank) this.resume();
  }

  /**
   * An acknowledged alarm still active was re-sent as a reminder: one burst of its
   * priority, unless audio is paused.
   * @param {AlarmFrame} a
   */
  remind(a) {
    if (this.armed && !this.paused) this.burst(a.priority, "reminder");
  }

  /**
   * Called every few hundred ms with the unacknowledged alarms and the connection:
   * start the burst that is due. A station that has lost the gateway for
   * DISCONNECTED_SOUND_AFTER_MS sounds the medium burst every DISCONNECTED_REPEAT_MS,
   * paused or not: it is the station's own technical alarm, and the only one it can
   * raise when no alarm can reach it.
   * @param {AlarmFrame[]} sounding
   * @param {{connected: boolean, downSince: number|null}} link
   */
  tick(sounding, link) {
    const live = new Set(sounding.map((a) => a.id));
    for (const id of this.announced) if (!live.has(id)) this.announced.delete(id);
    if (!this.armed) return;
    const now = Date.now();
    if (!link.connected && link.downSince !== null && now - link.downSince >= DISCONNECTED_SOUND_AFTER_MS) {
      if (now - this.lastDisconnected >= DISCONNECTED_REPEAT_MS) {
        this.lastDisconnected = now;
        this.burst("medium", "disconnected");
      }
      return;
    }
    if (this.paused || sounding.length === 0) return;
    const top = highestPriority(sounding) ?? "low";
    if (top === "low") {
      const fresh = sounding.filter((a) => !this.announced.has(a.id));
      if (fresh.length === 0) return;
      for (const a of fresh) this.announced.add(a.id);
      this.burst("low", "alarm");
      return;
    }
    const every = top === "high" ? HIGH_REPEAT_MS : MEDIUM_REPEAT_MS;
    if (now - (this.lastBurst.get(top) ?? 0) >= every) this.burst(top, "alarm");
  }

  /**
   * @param {Priority} priority
   * @param {Burst["why"]} why
   */
  burst(priority, why) {
    const ctx = /** @type {AudioContext} */ (this.ctx);
    const spec = BURSTS[priority];
    const start = ctx.currentTime + 0.02;
    for (const onset of spec.onsets) {
      const t = start + onset / 1000;
      const osc = ctx.createOscillator();
      osc.setPeriodicWave(/** @type {PeriodicWave} */ (this.wave));
      osc.frequency.value = spec.freq;
      const gain = ctx.createGain();
      // Short rise and fall: no clicks.
      gain.gain.setValueAtTime(0, t);
      gain.gain.linearRampToValueAtTime(0.25, t + 0.015);
      gain.gain.setValueAtTime(0.25, t + spec.pulseMs / 1000 - 0.02);
      gain.gain.linearRampToValueAtTime(0, t + spec.pulseMs / 1000);
      osc.connect(gain).connect(ctx.destination);
      osc.start(t);
      osc.stop(t + spec.pulseMs / 1000 + 0.01);
    }
    this.lastBurst.set(priority, Date.now());
    this.played.push({ priority, pulses: spec.onsets.length, at: Date.now(), why });
    if (this.played.length > 100) this.played.shift();
  }
}
