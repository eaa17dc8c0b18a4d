// Words, numbers and symbols as the station shows them.

/** @typedef {import("./ward.js").Priority} Priority */
/** @typedef {import("./ward.js").Vital} Vital */

/** Priority in text and symbols, so colour is never the only cue (IEC 60601-1-8). */
export const PRIORITY_TEXT = /** @type {const} */ ({
  high: { symbol: "!!!", word: "HIGH" },
  medium: { symbol: "!!", word: "MEDIUM" },
  low: { symbol: "!", word: "LOW" },
});

/** @type {Record<Vital, {label: string, unit: string}>} */
export const VITALS = {
  hr: { label: "HR", unit: "/min" },
  spo2: { label: "SpO₂", unit: "%" },
  sbp: { label: "SBP", unit: "mmHg" },
  dbp: { label: "DBP", unit: "mmHg" },
  rr: { label: "RR", unit: "/min" },
  etco2: { label: "EtCO₂", unit: "mmHg" },
};

/** What each refusal code of docs/protocol.md means, for the person who acted. */
const ERROR_WORDS = /** @type {Record<string, string>} */ ({
  bad_command: "The gateway did not understand the command.",
  unknown_alarm: "That alarm is no longer active (it cleared, or was never in your sites).",
  already_acknowledged: "Someone has already acknowledged that alarm.",
  snapshot_pending: "A refresh is already under way.",
  bad_session: "The session details are incomplete or invalid (a patient id is needed).",
  bad_transition: "That phase cannot follow the chair's current phase (phases move one step forward).",
  stale_session: "A newer session change has already been applied to this chair.",
  unknown_rule: "There is no such alarm rule.",
  bad_limit: "That limit is outside what the vital can be, or low is not below high.",
  chair_limit: "The gateway is tracking as many chairs as it may.",
  unknown_chair: "The gateway does not know that chair.",
  forbidden: "Your role does not allow this.",
  shutting_down: "The gateway is shutting down and did not do this. Do it again once the station has reconnected.",
  no_owner: "No gateway is looking after this chair for a moment (one is taking it over). Nothing was done: try again in a few seconds.",
  not_journaled: "The change could not be recorded, so nothing was done. Try again.",
  no_answer: "The gateway did not answer in time: this may or may not have been done. Look at the alarm or the chair before trying again.",
});

/**
 * @param {string} code
 * @param {string} [message]
 */
export function errorInWords(code, message) {
  const words = ERROR_WORDS[code] ?? "The gateway refused the command.";
  return message ? `${words} (${code}: ${message})` : `${words} (${code})`;
}

/**
 * A vital's value as a monitor shows it: whole numbers (every vital here is
 * reported in whole units).
 * @param {number} value
 */
export function formatValue(value) {
  return String(Math.round(value));
}

/**
 * "45 s", "3 min", "2 h 05 min".
 * @param {number} ms
 */
export function formatAge(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}

/**
 * An age to the minute ("under 1 min", "3 min", "2 h 05 min"): for what a nurse
 * reads in minutes (a cuff reading's age, minutes into infusion), and so that
 * forty tiles do not change text every second.
 * @param {number} ms
 */
export function formatMinutes(ms) {
  return ms < 60_000 ? "under 1 min" : formatAge(ms);
}

/**
 * Wall-clock time of day, 24 h.
 * @param {number} ms
 */
export function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}

/**
 * Date and time for the history.
 * @param {number} ms
 */
export function dateTime(ms) {
  const d = new Date(ms);
  return `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${clock(ms)}`;
}

/**
 * An element with a class and text.
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {string} [className]
 * @param {string} [text]
 * @returns {HTMLElementTagNameMap[K]}
 */
export function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

/**
 * Set text only when it changed (no layout work for a value that stayed).
 * @param {HTMLElement} e
 * @param {string} text
 */
export function setText(e, text) {
  if (e.textContent !== text) e.textContent = text;
}
