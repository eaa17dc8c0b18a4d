// The station's one WebSocket to the gateway (`GET /ws`, docs/protocol.md).
//
// Never silently stale: every way the connection can end (closed, refused,
// unreachable, or silent while the socket looks open) turns into a "disconnected"
// status at once, and reconnecting resumes with `since` + `instance`, so an alarm
// raised meanwhile is replayed (or, when the gateway no longer holds it, a `missed`
// frame and a fresh snapshot follow). Reconnects back off with jitter so that a
// ward of stations does not reconnect in lockstep after a gateway restart.

/** First retry delay, ms. */
const RETRY_FIRST_MS = 500;
/** Longest retry delay, ms. */
const RETRY_MAX_MS = 8_000;
/** A snapshot is asked for this often: it lets chairs the gateway forgot leave the
 * grid, and its answer proves the connection is alive. */
export const REFRESH_MS = 10_000;
/** With nothing at all received for this long (two refreshes unanswered), the
 * connection is taken as dead. */
const SILENCE_MS = 2 * REFRESH_MS;
/** A socket that opens but says nothing for this long is given up and retried. */
const FIRST_FRAME_MS = 10_000;

/** Close code: the token expired (docs/protocol.md). */
export const TOKEN_EXPIRED = 4001;

/**
 * @typedef {object} Status
 * @property {boolean} connected  the gateway has sent a frame on the current socket
 * @property {number|null} downSince  when the station last lost the gateway (ms), null while connected
 * @property {number} attempts  failed attempts since the last success
 * @property {string} detail  why, in words
 */

/**
 * @typedef {object} ConnectionOptions
 * @property {() => string} url  the /ws URL, with since/instance/access_token as they are now
 * @property {(frame: any) => void} onFrame
 * @property {(status: Status) => void} onStatus
 * @property {(code: number) => void} onEnd  a close the station must not retry (token expired)
 */

export class Connection {
  /** @param {ConnectionOptions} o */
  constructor(o) {
    this.o = o;
    /** @type {WebSocket|null} */
    this.socket = null;
    /** @type {Status} */
    this.status = { connected: false, downSince: Date.now(), attempts: 0, detail: "connecting" };
    this.lastFrameAt = 0;
    this.stopped = false;
    /** @type {ReturnType<typeof setTimeout>|undefined} */
    this.retry = undefined;
    this.watch = setInterval(() => this.check(), 1_000);
    this.lastRefresh = 0;
  }

  start() {
    this.stopped = false;
    this.open();
  }

  /** Stop for good (sign-out, expired token). */
  stop() {
    this.stopped = true;
    clearTimeout(this.retry);
    clearInterval(this.watch);
    this.socket?.close(1000);
    this.socket = null;
  }

  /**
   * Send a command. False when not connected (the caller says so: a command is
   * never queued for later, when it may no longer be meant).
   * @param {object} command
   */
  send(command) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(command));
    return true;
  }

  open() {
    let socket;
    try {
      socket = new WebSocket(this.o.url());
    } catch (e) {
      this.lost(`cannot open: ${e}`);
      return;
    }
    this.socket = socket;
    this.lastFrameAt = Date.now();
    socket.onmessage = (m) => {
      if (socket !== this.socket) return;
      this.lastFrameAt = Date.now();
      let frame;
      try {
        frame = JSON.parse(String(m.data));
      } catch {
        return;
      }
      // Any frame is the gateway talking: a resumed connection with nothing to
      // replay sends only the reply to the subscription.
      if (!this.status.connected) {
        this.lastRefresh = Date.now();
        this.setStatus({ connected: true, downSince: null, attempts: 0, detail: "connected" });
      }
      this.o.onFrame(frame);
    };
    socket.onopen = () => {
      // Live vitals: the reply and every chair's current values follow. On a resumed
      // connection (no snapshot) the reply is what proves the gateway is there.
      socket.send(JSON.stringify({ type: "subscribe_vitals" }));
    };
    socket.onclose = (e) => {
      if (socket !== this.socket) return;
      this.socket = null;
      if (e.code === TOKEN_EXPIRED) {
        this.setStatus({ ...this.status, connected: false, downSince: this.status.downSince ?? Date.now(), detail: "your sign-in expired" });
        this.stopped = true;
        this.o.onEnd(e.code);
        return;
      }
      this.lost(closeInWords(e.code, e.reason));
    };
  }

  /** @param {string} detail */
  lost(detail) {
    const attempts = this.status.attempts + 1;
    // Alarms are not received since the last frame, not since the loss was
    // noticed (a silent socket is noticed SILENCE_MS later).
    const since = this.status.downSince ?? Math.min(Date.now(), this.lastFrameAt || Date.now());
    this.setStatus({ connected: false, downSince: since, attempts, detail });
    if (this.stopped) return;
    // Full jitter between half and all of the exponential step.
    const step = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** Math.min(attempts - 1, 10));
    const delay = step / 2 + Math.random() * (step / 2);
    clearTimeout(this.retry);
    this.retry = setTimeout(() => this.open(), delay);
  }

  /** Once a second: refresh the snapshot, and treat a silent socket as lost. */
  check() {
    const s = this.socket;
    if (!s) return;
    const now = Date.now();
    if (!this.status.connected) {
      // Opening, or open without a word: neither may last.
      if (now - this.lastFrameAt > FIRST_FRAME_MS) {
        this.socket = null;
        s.close();
        this.lost("the gateway does not answer");
      }
      return;
    }
    if (now - this.lastFrameAt > SILENCE_MS) {
      this.socket = null;
      s.close();
      this.lost(`nothing received for ${Math.round((now - this.lastFrameAt) / 1000)} s`);
      return;
    }
    if (now - this.lastRefresh >= REFRESH_MS) {
      this.lastRefresh = now;
      this.send({ type: "snapshot" });
    }
  }

  /** @param {Status} s */
  setStatus(s) {
    this.status = s;
    this.o.onStatus(s);
  }
}

/**
 * Why a socket closed, for the banner.
 * @param {number} code
 * @param {string} reason
 */
function closeInWords(code, reason) {
  const words = /** @type {Record<number, string>} */ ({
    1001: "the gateway is restarting or shutting down",
    1006: "the gateway cannot be reached",
    1008: "the station sent commands too fast",
    4000: "the connection was idle too long",
    4008: "the station fell behind the alarm stream",
  })[code] ?? `connection closed (${code})`;
  return reason ? `${words}: ${reason}` : words;
}
