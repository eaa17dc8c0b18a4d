// `vitalgate demo` as a newcomer meets it: one command, a printed URL, and within
// the first minute a living, SIMULATED ward showing a blood-pressure surge, a
// desaturation, a probe off and a device going offline, then recovering.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { after, test } from "node:test";
import { BIN, IMAGES, browser, eventually, freePort, station } from "./harness.js";

/** @type {import("node:child_process").ChildProcess|null} */
let demo = null;
/** @type {import("playwright-core").Browser|null} */
let chromium = null;

after(async () => {
  await chromium?.close();
  demo?.kill("SIGTERM");
});

test("vitalgate demo shows the promised alarms in the page within its first minute", async () => {
  const port = await freePort();
  const started = Date.now();
  demo = spawn(BIN, ["demo"], {
    env: { ...process.env, RUST_LOG: "warn", VITALGATE_HTTP__BIND: `127.0.0.1:${port}`, VITALGATE_MQTT__EMBEDDED__BIND: "127.0.0.1:0" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  demo.stdout?.on("data", (b) => (out += b.toString()));
  demo.stderr?.on("data", (b) => (out += b.toString()));
  const url = await eventually(() => /SIMULATED WARD.*nurse station at (http:\/\/\S+)/.exec(out)?.[1], `the demo's URL in its output:\n${out}`, 30_000);
  assert.equal(url, `http://127.0.0.1:${port}/`);

  chromium = await browser();
  const { page, foreign, errors } = await station(chromium, url);
  await page.locator("#signin-field").fill("demo.nurse");
  await page.locator("#signin-form button").click();
  await eventually(async () => (await page.locator(".tile").count()) === 12, "12 chairs", 20_000);
  assert.equal(await page.locator("#simulated-banner").isVisible(), true, "the SIMULATED WARD banner");
  assert.match(await page.locator("#simulated-banner").innerText(), /^SIMULATED WARD — /, "every chair simulated");
  assert.equal(await page.locator(".tile .simulated-tag").count(), 12, "every tile says SIMULATED");
  const phases = await page.locator(".tile").evaluateAll((ts) => ts.map((t) => /** @type {HTMLElement} */ (t).dataset.phase));
  for (const p of ["baseline", "infusion", "recovery", "idle", "discharged"]) assert.ok(phases.includes(p), `a chair in ${p}: ${phases}`);

  // Every alarm the page shows, as it shows it, until the promises are met.
  /** @type {Map<number, {chair: string, rules: Set<string>, priority: string, vital?: string}>} */
  const seen = new Map();
  /** @type {Set<number>} */
  const gone = new Set();
  let shot = false;
  const met = () => {
    const rules = [...seen.entries()];
    const endedRule = (/** @type {string} */ r) => rules.some(([id, a]) => a.rules.has(r) && gone.has(id));
    return rules.some(([, a]) => a.vital === "sbp" && a.priority === "high") && ["spo2_critical", "spo2_stale", "device_offline"].every(endedRule);
  };
  await eventually(async () => {
    /** @type {{id: number, chair: string, rules: string[], priority: string, vital?: string}[]} */
    const now = await page.evaluate(() => [.../** @type {any} */ (window).vitalgateStation.ward.alarms.values()].map((a) => ({ id: a.id, chair: a.chair, rules: [a.rule, ...(a.rules ?? []).map((/** @type {any} */ r) => r.rule)], priority: a.priority, vital: a.vital })));
    const ids = new Set(now.map((a) => a.id));
    // An alarm's rules and priority change while it is open: keep every rule it held.
    for (const a of now) seen.set(a.id, { ...a, rules: new Set([...(seen.get(a.id)?.rules ?? []), ...a.rules]), priority: seen.get(a.id)?.priority === "high" ? "high" : a.priority });
    for (const id of seen.keys()) if (!ids.has(id)) gone.add(id);
    if (!shot && now.some((a) => a.rules.includes("device_offline")) && now.some((a) => a.rules.includes("spo2_critical"))) {
      shot = true;
      await page.screenshot({ path: join(IMAGES, "station-demo.png") });
    }
    return met();
  }, `the demo's alarms (seen so far: ${JSON.stringify([...seen.values()])})`, 80_000);
  const within = (Date.now() - started) / 1000;
  assert.ok([...seen.values()].every((a) => a.chair.startsWith("demo/")), "simulated chairs only");
  // Tiles show them: the SBP surge's tile went red at some point; now the device is back.
  const offline = [...seen.entries()].find(([, a]) => a.rules.has("device_offline"));
  assert.ok(offline && gone.has(offline[0]), "the offline device came back");
  assert.deepEqual(foreign, []);
  assert.deepEqual(errors, []);
  console.log(`demo: promised alarms raised and ended ${within.toFixed(0)} s after the command`);
});
