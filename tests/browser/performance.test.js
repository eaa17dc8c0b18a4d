// The station's own cost, measured in the browser (not asserted against a time:
// these machines are shared and noisy; the figures go to docs/performance.md):
// - from a WebSocket alarm frame to its tile painted, with 40 chairs sending live
//   vitals at 1 Hz;
// - the page's main-thread CPU in that state (Chromium's TaskDuration);
// - the page's memory over an hour of device time, replayed faster than real time.
//
// Prints a table and writes tests/browser/artifacts/performance.json.

import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { ARTIFACTS, Broker, Devices, Gateway, IMAGES, browser, eventually, station } from "./harness.js";

const CHAIRS = Array.from({ length: 40 }, (_, i) => `ward/${i + 1}`);
/** Steady state measured, ms of wall time. */
const STEADY_MS = Number(process.env.STEADY_MS ?? 60_000);
/** Alarm transitions per second during the steady state (a raise or a clear). */
const ALARM_EVENTS_PER_S = 4;
/** Device time replayed for the memory check, and how much faster than real time. */
const REPLAY_MS = Number(process.env.REPLAY_MS ?? 3_600_000);
const REPLAY_SPEED = 60;

/** @param {number[]} xs @param {number} q */
function quantile(xs, q) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)];
}

/** @param {number} ms */
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

describe("nurse station performance (40 chairs)", () => {
  /** @type {Broker} */ let broker;
  /** @type {Gateway} */ let gateway;
  /** @type {Devices} */ let devices;
  /** @type {import("playwright-core").Browser} */ let chromium;
  /** @type {Awaited<ReturnType<typeof station>>} */ let s;
  /** @type {import("playwright-core").CDPSession} */ let cdp;
  /** @type {Record<string, unknown>} */ const results = { chairs: CHAIRS.length };
  let seq = 10_000;
  const nextSeq = () => ++seq;

  before(async () => {
    broker = await Broker.start();
    gateway = await Gateway.start(broker);
    devices = await Devices.connect(broker);
    for (const [i, chair] of CHAIRS.entries()) {
      await devices.session(chair, { phase: "baseline", patient: `P-${200 + i}`, route: "iv", session_number: 3, session_count: 6, ts: Date.now() - 60 * 60_000 });
      await devices.vitals(chair, { hr: 72, spo2: 98, sbp: 122, dbp: 76, rr: 14 });
      await devices.vitals(chair, { hr: 74, spo2: 97, sbp: 124, dbp: 78, rr: 15 });
      await devices.session(chair, { phase: "infusion", patient: `P-${200 + i}`, ts: Date.now() - (5 + i) * 60_000 });
    }
    chromium = await browser();
    s = await station(chromium, gateway.url);
    await s.page.locator("#signin-field").fill("perf");
    await s.page.locator("#signin-form button").click();
    await eventually(async () => (await s.page.locator(".tile").count()) === CHAIRS.length, "40 tiles");
    cdp = await s.context.newCDPSession(s.page);
    await cdp.send("Performance.enable");
  });

  after(async () => {
    writeFileSync(join(ARTIFACTS, "performance.json"), JSON.stringify(results, null, 2));
    console.log(JSON.stringify(results, null, 2));
    await chromium?.close();
    await devices?.close();
    await gateway?.stop();
    broker?.stop();
  });

  /** Chromium's main-thread busy time so far, s, and other counters. */
  async function counters() {
    const { metrics } = await cdp.send("Performance.getMetrics");
    return Object.fromEntries(metrics.map((m) => [m.name, m.value]));
  }

  /** Live vitals: every chair once a second, spread over the second. Returns stop(). */
  function liveVitals() {
    let stop = false;
    const done = (async () => {
      let tick = 0;
      while (!stop) {
        const t0 = Date.now();
        for (const chair of CHAIRS) {
          const [, n] = chair.split("/");
          const v = { seq: nextSeq(), ts: Date.now(), hr: 70 + (tick % 7), spo2: 96 + (tick % 3), rr: 13 + (tick % 3), etco2: 35 + (tick % 4), pump: { running: true, rate_ml_h: 40, infused_ml: 10 + tick * 0.01 } };
          devices.client.publish(`clinic/ward/chair/${n}/vitals`, JSON.stringify(v), { qos: 1 });
          await sleep(1000 / CHAIRS.length / 2);
        }
        tick++;
        await sleep(Math.max(0, 1000 - (Date.now() - t0)));
      }
    })();
    return async () => {
      stop = true;
      await done;
    };
  }

  /** @param {string} chair @param {Record<string, unknown>} v */
  function publish(chair, v) {
    devices.client.publish(`clinic/ward/chair/${chair}/vitals`, JSON.stringify({ seq: nextSeq(), ts: Date.now(), ...v }), { qos: 1 });
  }

  /** Main-thread shares of one core over `ms`. @param {number} ms */
  async function mainThread(ms) {
    const before = await counters();
    const wall0 = Date.now();
    await sleep(ms);
    const afterC = await counters();
    const wall = (Date.now() - wall0) / 1000;
    return {
      wall_s: wall,
      cpu_share_of_one_core: (afterC.TaskDuration - before.TaskDuration) / wall,
      script_share: (afterC.ScriptDuration - before.ScriptDuration) / wall,
      layout_share: (afterC.LayoutDuration - before.LayoutDuration) / wall,
      style_share: (afterC.RecalcStyleDuration - before.RecalcStyleDuration) / wall,
    };
  }

  test("main-thread CPU with 40 chairs at 1 Hz and alarms standing (flashing, acknowledged)", async () => {
    const stop = liveVitals();
    // A high alarm flashing, a medium one flashing, a high one acknowledged.
    publish("3", { sbp: 190, dbp: 85 });
    publish("7", { sbp: 158, dbp: 85 }); // over its own limit (baseline 123 + 30): medium
    publish("9", { sbp: 195, dbp: 85 });
    // One SBP alarm per chair (its rules met listed in it).
    await eventually(() => s.page.evaluate(() => /** @type {any} */ (window).vitalgateStation.ward.alarms.size >= 3), "alarms standing");
    await s.page.locator('.tile[data-chair="ward/9"] .alarm-strip').click();
    await sleep(5_000);
    results.main_thread_steady = await mainThread(STEADY_MS / 2);
    await s.page.screenshot({ path: join(IMAGES, "station-40-chairs.png") });
    // Tiles this small drop the site and the session count, never the route.
    const first = s.page.locator('.tile[data-chair="ward/1"]');
    assert.equal(await first.locator(".route").innerText(), "IV");
    assert.equal(await first.locator(".course").textContent(), "session 3 of 6");
    assert.equal(await first.locator(".course").isVisible(), false, "the session count left out");
    publish("3", { sbp: 120, dbp: 78 });
    publish("7", { sbp: 120, dbp: 78 });
    publish("9", { sbp: 120, dbp: 78 });
    await stop();
    assert.deepEqual(s.errors, []);
  });

  test("alarm frame to painted tile with 40 chairs at 1 Hz", async () => {
    const stop = liveVitals();
    await sleep(3_000);
    await s.page.evaluate(() => {
      /** @type {any} */ (window).vitalgateStation.metrics.alarmToPaintMs.length = 0;
    });
    // Alarm transitions: SBP above 180 raises the chair's SBP alarm at once (high:
    // sbp_critical, holding sbp_warn); 120 clears it. One frame each.
    let k = 0;
    const churn = (async () => {
      const wall0 = Date.now();
      while (Date.now() - wall0 < STEADY_MS) {
        const chair = CHAIRS[Math.floor(k / 2) % CHAIRS.length].split("/")[1];
        publish(chair, { sbp: k % 2 === 0 ? 190 : 120, dbp: 80 });
        k++;
        await sleep(1000 / ALARM_EVENTS_PER_S);
      }
    })();
    results.main_thread_alarm_churn = { ...(await mainThread(STEADY_MS - 500)), alarm_transitions_per_s: ALARM_EVENTS_PER_S };
    await churn;
    await stop();
    /** @type {number[]} */
    const paint = await s.page.evaluate(() => /** @type {any} */ (window).vitalgateStation.metrics.alarmToPaintMs);
    assert.ok(paint.length >= (STEADY_MS / 1000) * ALARM_EVENTS_PER_S * 0.5, `${paint.length} alarm frames measured`);
    results.alarm_to_paint_ms = {
      samples: paint.length,
      p50: quantile(paint, 0.5),
      p90: quantile(paint, 0.9),
      p99: quantile(paint, 0.99),
      max: Math.max(...paint),
    };
    assert.deepEqual(s.errors, []);
  });

  test("memory over an hour of device time stays flat", async () => {
    // Device time from an hour ago up to now, REPLAY_SPEED times faster than real
    // time, so the trends fill, age and prune as they would over an hour.
    const start = Date.now() - REPLAY_MS;
    /** @type {{minute: number, heap_mb: number, nodes: number}[]} */
    const samples = [];
    const stepMs = 1000;
    for (let t = 0; t <= REPLAY_MS; t += stepMs) {
      const ts = start + t;
      for (const chair of CHAIRS) {
        const n = chair.split("/")[1];
        const v = { seq: nextSeq(), ts, hr: 70 + ((t / 1000) % 9), spo2: 95 + ((t / 1000) % 4), rr: 14, ...(t % 180_000 === 0 ? { sbp: 120 + ((t / 60_000) % 20), dbp: 78 } : {}) };
        devices.client.publish(`clinic/ward/chair/${n}/vitals`, JSON.stringify(v), { qos: 1 });
      }
      // An alarm raised and cleared now and then on the way.
      if (t % 300_000 === 0) {
        devices.client.publish("clinic/ward/chair/1/vitals", JSON.stringify({ seq: nextSeq(), ts, sbp: 195, dbp: 80 }), { qos: 1 });
      }
      if (t % 300_000 === 60_000) {
        devices.client.publish("clinic/ward/chair/1/vitals", JSON.stringify({ seq: nextSeq(), ts, sbp: 121, dbp: 80 }), { qos: 1 });
      }
      if (t % 600_000 === 0) {
        await sleep(1_000);
        await cdp.send("HeapProfiler.collectGarbage");
        const c = await counters();
        samples.push({ minute: t / 60_000, heap_mb: c.JSHeapUsedSize / 1e6, nodes: c.Nodes });
      }
      await sleep(stepMs / REPLAY_SPEED);
    }
    results.memory = samples;
    const at15 = samples.find((x) => x.minute >= 20) ?? samples[0];
    const last = samples[samples.length - 1];
    results.memory_growth_after_20_min_mb = last.heap_mb - at15.heap_mb;
    // Trends are pruned to 15 minutes: memory after that must not keep growing
    // with time (a leak of even one sample per reading would add megabytes here).
    assert.ok(last.heap_mb < at15.heap_mb * 1.5 + 2, `heap ${at15.heap_mb} MB at ${at15.minute} min, ${last.heap_mb} MB at ${last.minute} min`);
    const trend = await s.page.evaluate(() => /** @type {any} */ (window).vitalgateStation.ward.chairs.get("ward/2").trend.spo2.length);
    assert.ok(trend <= 2 * (15 * 60 / 2 + 2), `${trend / 2} SpO2 trend samples kept`);
  });
});
