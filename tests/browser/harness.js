// What the browser tests stand on: a private Mosquitto and a real vitalgate on free
// ports, devices publishing over MQTT, real headless Chromium (Debian's package)
// driven by playwright-core, and JWTs signed like a clinic's identity provider would.
// Every process is started here and killed when the test ends.

import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, connect as tcpConnect } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import mqtt from "mqtt";
import { chromium } from "playwright-core";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
/** Screenshots committed for the README and docs (rerunning the tests refreshes them). */
export const IMAGES = join(ROOT, "docs/images");
/** Measurements and diagnostics of the last run. */
export const ARTIFACTS = join(ROOT, "tests/browser/artifacts");
mkdirSync(ARTIFACTS, { recursive: true });

export const BIN = process.env.VITALGATE_BIN ?? join(ROOT, "target/debug/vitalgate");
const MOSQUITTO = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"].find((p) => existsSync(p)) ?? "mosquitto";
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

/** A port nobody listens on now. */
export async function freePort() {
  return await new Promise((res, rej) => {
    const s = createServer();
    s.on("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const port = /** @type {import("node:net").AddressInfo} */ (s.address()).port;
      s.close(() => res(port));
    });
  });
}

/**
 * Wait until `check` returns a truthy value (polled every 50 ms), or fail naming `what`.
 * @template T
 * @param {() => T | Promise<T>} check
 * @param {string} what
 * @param {number} [timeoutMs]
 * @returns {Promise<T>}
 */
export async function eventually(check, what, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last}` : ""}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** @param {number} port */
async function listening(port) {
  return await new Promise((res) => {
    const s = tcpConnect(port, "127.0.0.1");
    s.on("connect", () => {
      s.destroy();
      res(true);
    });
    s.on("error", () => res(false));
  });
}

export class Broker {
  /** @param {number} port @param {import("node:child_process").ChildProcess} child @param {string} dir */
  constructor(port, child, dir) {
    this.port = port;
    this.child = child;
    this.dir = dir;
  }

  static async start() {
    const port = await freePort();
    const dir = mkdtempSync(join(tmpdir(), "vg-browser-mosq-"));
    const conf = join(dir, "mosquitto.conf");
    // The operations guide's settings: the defaults drop QoS 1 messages under bursts.
    writeFileSync(conf, `listener ${port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 1000\nmax_queued_messages 100000\nset_tcp_nodelay true\n`);
    const child = spawn(MOSQUITTO, ["-c", conf], { stdio: "ignore" });
    child.on("error", (e) => {
      throw new Error(`mosquitto did not start (apt-get install mosquitto): ${e.message}`);
    });
    await eventually(() => listening(port), `mosquitto on ${port}`);
    return new Broker(port, child, dir);
  }

  stop() {
    this.child.kill("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * A JWT signed with HS256, as `auth.mode = "jwt"` expects.
 * @param {string} secret
 * @param {Record<string, unknown>} claims
 */
export function jwt(secret, claims) {
  const b64 = (/** @type {object} */ o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ aud: "vitalgate", exp: Math.floor(Date.now() / 1000) + 3600, sites: ["*"], ...claims })}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

export class Gateway {
  /**
   * @param {Broker} broker
   * @param {{jwtSecret?: string, env?: Record<string, string>}} [o]
   */
  constructor(broker, o = {}) {
    this.broker = broker;
    this.o = o;
    this.dir = mkdtempSync(join(tmpdir(), "vg-browser-gw-"));
    this.clientId = `vg-browser-${randomBytes(4).toString("hex")}`;
    /** @type {import("node:child_process").ChildProcess|null} */
    this.child = null;
    this.port = 0;
    this.log = "";
  }

  /**
   * @param {Broker} broker
   * @param {{jwtSecret?: string, env?: Record<string, string>}} [o]
   */
  static async start(broker, o) {
    const g = new Gateway(broker, o);
    g.port = await freePort();
    await g.run();
    return g;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Start the process (again, on the same port, audit trail and MQTT session). */
  async run() {
    /** @type {Record<string, string>} */
    const env = {
      ...process.env,
      RUST_LOG: "info,rumqttc=warn",
      VITALGATE_HTTP__BIND: `127.0.0.1:${this.port}`,
      VITALGATE_MQTT__BROKER: "external",
      VITALGATE_MQTT__HOST: "127.0.0.1",
      VITALGATE_MQTT__PORT: String(this.broker.port),
      VITALGATE_MQTT__CLIENT_ID: this.clientId,
      VITALGATE_AUDIT__PATH: join(this.dir, "audit.sqlite3"),
      ...(this.o.jwtSecret ? { VITALGATE_AUTH__MODE: "jwt", VITALGATE_AUTH__KEY: this.o.jwtSecret } : {}),
      ...this.o.env,
    };
    const child = spawn(BIN, [], { env, stdio: ["ignore", "pipe", "pipe"] });
    this.child = child;
    const keep = (/** @type {Buffer} */ b) => {
      this.log += b.toString();
      if (this.log.length > 200_000) this.log = this.log.slice(-100_000);
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    await eventually(async () => {
      if (child.exitCode !== null) throw new Error(`vitalgate exited ${child.exitCode}:\n${this.log}`);
      const r = await fetch(`${this.url}/ready`).catch(() => null);
      return r?.ok;
    }, `vitalgate ready on ${this.port} (${BIN}; build it with cargo build)`, 30_000);
  }

  /** kill -9: no goodbye to anyone. */
  async kill() {
    const child = this.child;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGKILL");
    await exited;
  }

  async stop() {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Bedside devices: one MQTT connection publishing for any number of chairs. */
export class Devices {
  /** @param {import("mqtt").MqttClient} client */
  constructor(client) {
    this.client = client;
    /** @type {Map<string, number>} */
    this.seq = new Map();
  }

  /** @param {Broker} broker */
  static async connect(broker) {
    const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${broker.port}`, {
      clientId: `vg-browser-dev-${randomBytes(4).toString("hex")}`,
      reconnectPeriod: 200,
    });
    return new Devices(client);
  }

  /**
   * One reading (QoS 1), `ts` now unless given.
   * @param {string} chair  "site/chair"
   * @param {Record<string, unknown>} vitals
   */
  async vitals(chair, vitals) {
    const [site, n] = chair.split("/");
    const seq = (this.seq.get(chair) ?? 0) + 1;
    this.seq.set(chair, seq);
    await this.client.publishAsync(`clinic/${site}/chair/${n}/vitals`, JSON.stringify({ seq, ts: Date.now(), ...vitals }), { qos: 1 });
  }

  /**
   * A retained session message.
   * @param {string} chair
   * @param {Record<string, unknown>} session
   */
  async session(chair, session) {
    const [site, n] = chair.split("/");
    await this.client.publishAsync(`clinic/${site}/chair/${n}/session`, JSON.stringify({ ts: Date.now(), by: "test", ...session }), { qos: 1, retain: true });
  }

  async close() {
    await this.client.endAsync(true);
  }
}

/** Headless Chromium as the machine's package installs it. */
export async function browser() {
  return await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

/**
 * A station page at 1080p. Requests to anywhere but the gateway are recorded (the
 * page must make none), and so is every oscillator the page starts (audio is
 * checked through the Web Audio graph, not by ear).
 * @param {import("playwright-core").Browser} b
 * @param {string} url
 * @param {{clockOffsetMs?: number, name?: string}} [o]  run the page's clock this far from
 *   the real one; a name saved at this station before (auth "none")
 */
export async function station(b, url, o = {}) {
  const context = await b.newContext({ viewport: { width: 1920, height: 1080 } });
  const page = await context.newPage();
  /** @type {string[]} */
  const foreign = [];
  const origin = new URL(url).origin;
  page.on("request", (r) => {
    if (!r.url().startsWith(origin) && !r.url().startsWith(origin.replace("http", "ws")) && !r.url().startsWith("data:")) foreign.push(r.url());
  });
  /** @type {string[]} */
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(m.text());
  });
  await page.addInitScript(() => {
    /** @type {any} */ (window).oscillatorStarts = [];
    const start = OscillatorNode.prototype.start;
    OscillatorNode.prototype.start = function (/** @type {number|undefined} */ when) {
      /** @type {any} */ (window).oscillatorStarts.push({ freq: this.frequency.value, when, type: this.type });
      return start.call(this, when);
    };
  });
  // The page's clock, shifted by window.clockOffsetMs (which a test may change while
  // the page runs: a station whose clock is stepped).
  await page.addInitScript((offset) => {
    const now = Date.now;
    /** @type {any} */ (window).clockOffsetMs = offset;
    Date.now = () => now() + /** @type {any} */ (window).clockOffsetMs;
  }, o.clockOffsetMs ?? 0);
  if (o.name) {
    await page.addInitScript((name) => localStorage.setItem("vitalgate.name", name), o.name);
  }
  await page.goto(url);
  return { page, context, foreign, errors };
}
