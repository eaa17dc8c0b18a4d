// The nurse station: signs in, keeps one WebSocket to the gateway, holds the ward
// and draws it. Everything it shows comes from the documented protocol
// (docs/protocol.md): `/api/station` at sign-in (and for the gateway's clock every
// few minutes), then `/ws` frames.

import { AlarmAudio } from "./audio.js";
import { Connection } from "./connection.js";
import { ChairControls } from "./controls.js";
import { clock, errorInWords, el } from "./format.js";
import { StationHeader, byId } from "./header.js";
import { AlarmHistory } from "./history.js";
import { Outage } from "./outage.js";
import { forgetToken, get, savedName, signIn, token } from "./signin.js";
import { Grid } from "./tiles.js";
import { Ward, compareChairs } from "./ward.js";

/** @typedef {import("./ward.js").Vital} Vital */
/** @typedef {import("./ward.js").AlarmFrame} AlarmFrame */
/** @typedef {import("./signin.js").StationInfo} StationInfo */

/** Window over which the data's delay is judged (its smallest value in the window). */
const LAG_WINDOW_MS = 10_000;
/** How often the gateway's clock is read again, ms. */
const CLOCK_CHECK_MS = 5 * 60_000;
/** Alarm-to-paint samples kept for the station's own measurement. */
const PAINT_SAMPLES = 5_000;

const ward = new Ward();
const audio = new AlarmAudio();
// Audio is armed by a click or key anywhere, the sign-in's included (browsers
// allow sound only after one); until then the header says AUDIO OFF. Every click
// and key tries until sound is on: a first one the browser does not count as a
// gesture (a touch's pointerdown, Escape) must not leave the station silent.
const arm = () => {
  audio
    .arm()
    .then(() => {
      if (!audio.armed) return;
      document.removeEventListener("pointerdown", arm);
      document.removeEventListener("keydown", arm);
      schedule();
    })
    .catch(() => {}); // tried again at the next click or key; AUDIO OFF says so meanwhile
};
document.addEventListener("pointerdown", arm);
document.addEventListener("keydown", arm);
const header = new StationHeader();
/** @type {StationInfo} */
let info = await signIn();
/** Gateway clock minus this station's, ms (from `/api/station`, to within its round trip). */
let clockOffset = info.now - Date.now();
const gatewayNow = () => Date.now() + clockOffset;

/** The next snapshot replaces the ward rather than refreshing it (after `missed`). */
let replaceNext = false;
/** Alarms that ended while this station was not connected, told once the replay is in. */
const outage = new Outage();
/** The station's estimate of the gateway's clock runs behind it by up to a request's
 * round trip (`clockOffset` is measured when the answer arrives): an outage is taken
 * to end this much later than estimated, so that an alarm the gateway ended just
 * before the station reconnected is never left out of what the station says it
 * missed (one ending live within that time may be told as well: the safe side). */
const GAP_END_SLACK_MS = 2_000;
let outageTold = 0;
/** Smallest delay of live data in the current window, and the window's start. */
let lag = { min: Infinity, since: Date.now(), shown: 0 };

/** @type {Set<string>} chairs whose tiles need drawing */
const dirty = new Set();
let drawAll = true;
let frameRequested = false;
/** Alarm frames waiting for their tile to be painted: performance.now() at receipt. */
/** @type {number[]} */
let awaitingPaint = [];
const metrics = { alarmToPaintMs: /** @type {number[]} */ ([]), frames: 0, snapshots: 0, refreshesRefused: 0 };

const grid = new Grid({
  container: byId("grid"),
  onAck: acknowledge,
  mayAck: () => info.me.may.ack,
  onOpen: (key) => {
    const c = ward.chairs.get(key);
    if (c) controls.open(c);
  },
  staleAfterMs,
  now: gatewayNow,
});
const controls = new ChairControls({
  send: (c) => connection.send(c),
  by: actor,
  may: () => info.me.may,
  rules: () => info.rules,
  chair: (key) => ward.chairs.get(key),
  alarms: (key) => ward.alarmsOf(key),
  toast,
});
const history = new AlarmHistory(get, () => [...ward.chairs.keys()].sort(compareChairs), () => info.me.sites.includes("*"));
let connection = connect();
showUser();

function refusedSound() {
  toast("This browser refused to start sound: alarms will NOT be heard at this station.", "error");
}

/** @param {Vital} v */
function staleAfterMs(v) {
  const stale = info.technical.stale_ms;
  const own = stale[v] ?? 0;
  if (own > 0) return own;
  // DBP comes with SBP; EtCO2 as often as HR.
  const proxy = v === "dbp" ? stale.sbp : stale.hr;
  return proxy && proxy > 0 ? proxy : 15_000;
}

function actor() {
  return info.me.user ?? savedName() ?? "station";
}

function connect() {
  const c = new Connection({
    url: () => {
      const p = new URLSearchParams();
      if (ward.seq !== null && ward.instance !== null) {
        p.set("since", String(ward.seq));
        p.set("instance", ward.instance);
      }
      const t = token();
      if (t) p.set("access_token", t);
      return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws?${p}`;
    },
    onFrame,
    onStatus: (s) => {
      // Lost again before the last gap was told: tell it now, or never (the next
      // replay starts after it).
      if (!s.connected && outage.gap?.to != null) {
        clearTimeout(outageTold);
        tellOutage();
      }
      outage.status(s.connected, (s.downSince ?? Date.now()) + clockOffset, gatewayNow() + GAP_END_SLACK_MS);
      schedule();
      // A refused upgrade looks like an unreachable gateway to a browser: every third
      // attempt, and whenever the token's time is up, ask the API whether the token
      // is still good.
      const expired = info.me.expires_at !== null && Date.now() + clockOffset >= info.me.expires_at * 1000;
      if (!s.connected && info.auth === "jwt" && (s.attempts % 3 === 0 || expired)) recheckSignIn();
    },
    onEnd: () => reSignIn("Your sign-in expired. Sign in again to go on receiving alarms."),
  });
  c.start();
  return c;
}

async function recheckSignIn() {
  const r = await get("/api/station").catch(() => null);
  if (r && r.status === 401) reSignIn("Your token is no longer accepted. Sign in again.");
}

/** @param {string} why */
async function reSignIn(why) {
  connection.stop();
  forgetToken();
  // Whoever signs in next may see other sites: start from a fresh snapshot, never
  // from the previous user's place in the stream.
  ward.seq = null;
  ward.instance = null;
  info = await signIn(why);
  clockOffset = info.now - Date.now();
  showUser();
  connection = connect();
}

/** @param {any} f */
function onFrame(f) {
  metrics.frames++;
  switch (f.type) {
    case "snapshot": {
      metrics.snapshots++;
      const known = new Set(ward.alarms.keys());
      ward.applySnapshot(f, replaceNext);
      replaceNext = false;
      // Alarms first seen in a snapshot (after `missed`) are new to this station.
      for (const a of ward.alarms.values()) if (!known.has(a.id) && a.state === "raised") audio.raised(a);
      drawAll = true;
      break;
    }
    case "alarm": {
      /** @type {AlarmFrame} */
      const a = f;
      if (outage.alarm(a, ward.alarms.get(a.id))) {
        clearTimeout(outageTold);
        outageTold = setTimeout(tellOutage, 1_000);
      }
      ward.applyAlarm(a);
      if (a.state === "raised" && !a.escalated) audio.raised(a);
      if (a.reminder) audio.remind(a);
      dirty.add(a.chair);
      awaitingPaint.push(performance.now());
      break;
    }
    case "session":
      ward.applySession(f);
      dirty.add(f.chair);
      break;
    case "vitals":
      ward.applyVitals(f);
      noteLag(f.received_at);
      dirty.add(f.chair);
      return;
    case "missed": {
      replaceNext = true;
      const since = outage.gap ? ` since ${clock(outage.gap.from)}` : "";
      notice(`Events were missed while this station was not connected${since} (the gateway no longer held them all): the ward is rebuilt from the gateway's current state, and alarms that came and went meanwhile are in History only.`);
      break;
    }
    case "error":
      // The station's own periodic refresh, asked while the last one is still on its
      // way (a large ward, a slow link): nobody asked, nothing to say; that one
      // will do.
      if (f.code === "snapshot_pending") {
        metrics.refreshesRefused++;
        return;
      }
      toast(errorInWords(f.code, f.message), "error");
      break;
    default:
      return;
  }
  schedule();
}

/** @param {number|undefined} receivedAt */
function noteLag(receivedAt) {
  if (!receivedAt) return;
  lag.min = Math.min(lag.min, gatewayNow() - receivedAt);
}

/**
 * Draw in the next animation frame. Live vitals are not urgent: they arrive about
 * once a second per chair and are drawn with the once-a-second redraw, so 40 chairs
 * at 1 Hz cost one frame a second rather than forty. Alarms, sessions and the
 * connection's status are drawn at once.
 */
function schedule() {
  if (frameRequested) return;
  frameRequested = true;
  requestAnimationFrame(draw);
}

function draw() {
  frameRequested = false;
  const now = Date.now();
  if (now - lag.since >= LAG_WINDOW_MS) {
    lag = { min: Infinity, since: now, shown: Number.isFinite(lag.min) ? lag.min : 0 };
  }
  grid.render(ward, drawAll ? null : dirty);
  drawAll = false;
  dirty.clear();
  header.render(ward, audio, connection.status, clockOffset, lag.shown);
  controls.refresh(ward);
  if (awaitingPaint.length > 0) {
    const painted = awaitingPaint;
    awaitingPaint = [];
    // A task queued from the frame callback runs after that frame is painted.
    setTimeout(() => {
      const t = performance.now();
      for (const t0 of painted) metrics.alarmToPaintMs.push(t - t0);
      if (metrics.alarmToPaintMs.length > PAINT_SAMPLES) metrics.alarmToPaintMs.splice(0, metrics.alarmToPaintMs.length - PAINT_SAMPLES);
    });
  }
}

/**
 * Acknowledge the unacknowledged alarms of a chair that its tile showed when the
 * nurse acted (not one that arrived since and was never drawn), and only while
 * connected: a greyed, not-live grid may show alarms that are no longer so.
 * @param {string} key
 */
function acknowledge(key) {
  const ids = grid.shownUnacknowledged(key).filter((id) => ward.alarms.get(id)?.state === "raised");
  if (ids.length === 0) return;
  if (!info.me.may.ack) {
    toast("Your role may not acknowledge alarms.", "error");
    return;
  }
  if (!connection.status.connected) {
    toast("NOT acknowledged: not connected to the gateway.", "error");
    return;
  }
  const unsent = ids.filter((id) => !connection.send({ type: "ack", id, by: actor() }));
  if (unsent.length > 0) toast(`NOT acknowledged (${unsent.length} of ${ids.length}): the connection to the gateway dropped.`, "error");
}

/** Say which alarms ended while this station was not connected (they were never drawn). */
function tellOutage() {
  const told = outage.take();
  if (!told) return;
  const n = told.ended.length;
  const listed = told.ended
    .slice(0, 5)
    .map((a) => `chair ${a.chair}${ward.isSimulated(a.chair) ? " (SIMULATED)" : ""}: ${a.message} (${a.priority.toUpperCase()})`);
  const more = n > 5 ? `, and ${n - 5} more` : "";
  notice(`While this station was not connected (${clock(told.from)} to ${clock(told.to)}), ${n === 1 ? "1 alarm ended" : `${n} alarms ended`}: ${listed.join("; ")}${more}. See History.`);
}

/**
 * A message that stays until a nurse says it was seen.
 * @param {string} text
 */
function notice(text) {
  const t = el("div", "toast notice", text);
  t.setAttribute("role", "alert");
  const seen = el("button", "seen", "Seen");
  seen.type = "button";
  seen.addEventListener("click", () => t.remove());
  t.append(" ", seen);
  byId("toasts").append(t);
}

/**
 * A message in the corner for a few seconds (errors stay longer).
 * @param {string} text
 * @param {"error"|"info"} [kind]
 */
function toast(text, kind = "info") {
  const t = el("div", `toast ${kind}`, text);
  t.setAttribute("role", kind === "error" ? "alert" : "status");
  byId("toasts").append(t);
  setTimeout(() => t.remove(), kind === "error" ? 12_000 : 5_000);
}

function showUser() {
  const me = info.me;
  const who = me.user ?? savedName() ?? "?";
  const roles = info.auth === "none" ? "no sign-in: every control" : me.roles.join(", ") || "viewer";
  byId("user").textContent = `${who} (${roles}) · sites ${me.sites.join(", ")}`;
}

byId("audio-off").addEventListener("click", () => {
  audio.arm().then(schedule, refusedSound);
});
byId("audio-pause").addEventListener("click", () => {
  if (audio.paused) audio.resume();
  else audio.pause(ward.activeAlarms().filter((a) => a.state === "raised"));
  schedule();
});
byId("history-open").addEventListener("click", () => history.toggle());
byId("sign-out").addEventListener("click", () => {
  forgetToken();
  if (info.auth === "none") localStorage.removeItem("vitalgate.name");
  location.reload();
});

setInterval(() => {
  audio.tick(ward.activeAlarms().filter((a) => a.state === "raised"), connection.status);
}, 250);
// The gateway's clock, again now and then: the station's clock may be stepped.
setInterval(async () => {
  const r = await get("/api/station").catch(() => null);
  if (r?.ok) {
    const fresh = /** @type {StationInfo} */ (await r.json());
    clockOffset = fresh.now - Date.now();
  }
}, CLOCK_CHECK_MS);
// A hidden page is not drawn (browsers pause animation frames): draw all of it the
// moment it is shown again.
document.addEventListener("visibilitychange", () => {
  if (!document.hidden) {
    drawAll = true;
    schedule();
  }
});
// Live vitals, ages, rotation of alarm messages, countdowns and stale values.
setInterval(() => {
  drawAll = true;
  schedule();
}, 1_000);

// For the station's own measurements and the browser tests.
Object.assign(window, { vitalgateStation: { ward, audio, metrics, connection: () => connection } });
