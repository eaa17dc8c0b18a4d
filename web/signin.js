// Who is at the station.
//
// With `auth.mode = "jwt"` the station needs a token: from the URL fragment
// (`/#token=...`, which browsers never send to a server, so it stays out of logs)
// or pasted into the sign-in form. It is kept for this browser tab only
// (sessionStorage) and sent as `access_token` on the WebSocket, as browsers cannot
// set headers there. With `auth.mode = "none"` the station asks for a name, which
// it sends as `by` with every command.

import { byId } from "./header.js";

const TOKEN_KEY = "vitalgate.token";
const NAME_KEY = "vitalgate.name";

/**
 * @typedef {object} Me  the `me` of `GET /api/station`
 * @property {string|null} user
 * @property {string[]} roles
 * @property {string[]} sites
 * @property {number|null} expires_at
 * @property {import("./controls.js").May} may
 */

/**
 * @typedef {object} StationInfo  `GET /api/station`
 * @property {"none"|"jwt"} auth
 * @property {string} version
 * @property {number} now
 * @property {Me} me
 * @property {import("./controls.js").RuleSpec[]} rules
 * @property {{stale_ms: Record<string, number>, offline_ms: number}} technical
 */

/** The token this tab holds, taking one from the URL fragment first. */
export function token() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** The name given at this station (auth "none"). */
export function savedName() {
  return localStorage.getItem(NAME_KEY);
}

/**
 * An authenticated GET to the gateway.
 * @param {string} path
 */
export function get(path) {
  const t = token();
  return fetch(path, { headers: t ? { Authorization: `Bearer ${t}` } : {}, cache: "no-store" });
}

/**
 * Ask the gateway who we are; sign in (token or name) until it answers.
 * @param {string} [why]  shown above the form (e.g. "Your sign-in expired.")
 * @returns {Promise<StationInfo>}
 */
export async function signIn(why) {
  // A station that opens before the gateway (after a power cut) or loses the
  // network keeps trying by itself: nothing typed would help, and a token
  // typed here would replace the good one.
  let retryMs = 1_000;
  /** @type {number|null} */
  let failingSince = null;
  const waitAndRetry = async (/** @type {string} */ what) => {
    failingSince ??= Date.now();
    showWaiting(`${what} since ${new Date(failingSince).toLocaleTimeString()}: trying again by itself every few seconds. Alarms are NOT shown here until it answers.`);
    await new Promise((resolve) => setTimeout(resolve, retryMs));
    retryMs = Math.min(retryMs * 2, 5_000);
  };
  for (;;) {
    let r;
    try {
      r = await get("/api/station");
    } catch {
      await waitAndRetry("The gateway cannot be reached");
      continue;
    }
    if (r.status === 401 || r.status === 403) {
      const body = await r.json().catch(() => ({}));
      const refused = token() !== null;
      forgetToken();
      await showForm("token", why ?? (refused ? `That token was refused: ${body.error ?? r.status}.` : "Sign in with your access token."));
      why = undefined;
      continue;
    }
    if (!r.ok) {
      await waitAndRetry(`The gateway answers ${r.status}`);
      continue;
    }
    failingSince = null;
    retryMs = 1_000;
    /** @type {StationInfo} */
    const info = await r.json();
    if (info.auth === "none" && !savedName()) {
      await showForm("name", "This gateway does not authenticate: give your name, recorded with what you acknowledge and change.");
      continue;
    }
    byId("signin").hidden = true;
    return info;
  }
}

/**
 * Show `message` where the sign-in form goes, with nothing to fill in.
 * @param {string} message
 */
function showWaiting(message) {
  byId("signin-message").textContent = message;
  byId("signin-field-row").hidden = true;
  byId("signin-submit").hidden = true;
  byId("signin").hidden = false;
}

/**
 * Show the sign-in form and wait for it to be submitted.
 * @param {"token"|"name"} kind
 * @param {string} message
 * @returns {Promise<void>}
 */
function showForm(kind, message) {
  const section = byId("signin");
  const form = /** @type {HTMLFormElement} */ (byId("signin-form"));
  const field = /** @type {HTMLInputElement} */ (byId("signin-field"));
  const label = byId("signin-label");
  byId("signin-message").textContent = message;
  label.textContent = kind === "token" ? "Access token" : "Your name";
  field.value = "";
  field.type = kind === "token" ? "password" : "text";
  field.autocomplete = kind === "token" ? "off" : "name";
  byId("signin-field-row").hidden = false;
  byId("signin-submit").hidden = false;
  section.hidden = false;
  field.focus();
  return new Promise((resolve) => {
    form.onsubmit = (e) => {
      e.preventDefault();
      const v = field.value.trim();
      if (!v) return;
      if (kind === "token") sessionStorage.setItem(TOKEN_KEY, v);
      else localStorage.setItem(NAME_KEY, upToBytes(v, 128));
      section.hidden = true;
      form.onsubmit = null;
      resolve();
    };
  });
}

/**
 * The longest start of `s` of at most `max` UTF-8 bytes (`by` is 1-128 bytes).
 * @param {string} s
 * @param {number} max
 */
function upToBytes(s, max) {
  const enc = new TextEncoder();
  let out = "";
  for (const ch of s) {
    if (enc.encode(out + ch).length > max) break;
    out += ch;
  }
  return out;
}
