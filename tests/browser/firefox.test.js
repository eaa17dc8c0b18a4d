// The nurse station in Firefox (Debian's firefox-esr, driven over WebDriver BiDi by
// puppeteer-core): it loads with no error, renders the ward, shows an alarm red and
// flashing, and acknowledges it. The full behaviour is tested in Chromium; this
// shows the page does not depend on Chromium.

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import puppeteer from "puppeteer-core";
import { ARTIFACTS, Broker, Devices, Gateway, eventually } from "./harness.js";

const FIREFOX = process.env.FIREFOX ?? "/usr/bin/firefox-esr";

describe("nurse station in Firefox", { skip: existsSync(FIREFOX) ? false : `${FIREFOX} missing (apt-get install firefox-esr)` }, () => {
  /** @type {Broker} */ let broker;
  /** @type {Gateway} */ let gateway;
  /** @type {Devices} */ let devices;
  /** @type {import("puppeteer-core").Browser} */ let firefox;

  before(async () => {
    broker = await Broker.start();
    gateway = await Gateway.start(broker);
    devices = await Devices.connect(broker);
    await devices.session("west/1", { phase: "baseline", patient: "P-FF", route: "iv" });
    await devices.vitals("west/1", { hr: 72, spo2: 98, sbp: 120, dbp: 76, rr: 14 });
    firefox = await puppeteer.launch({ browser: "firefox", executablePath: FIREFOX, headless: true });
  });

  after(async () => {
    await firefox?.close();
    await devices?.close();
    await gateway?.stop();
    broker?.stop();
  });

  test("the ward renders, an alarm shows red and flashing, and is acknowledged", async () => {
    const page = await firefox.newPage();
    await page.setViewport({ width: 1920, height: 1080 });
    /** @type {string[]} */
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(gateway.url);
    await page.waitForSelector("#signin-field", { visible: true });
    await page.type("#signin-field", "nurse.ff");
    await page.click("#signin-form button");
    await page.waitForSelector('.tile[data-chair="west/1"]');
    await page.waitForSelector("#disconnected-banner", { hidden: true });
    const attr = (/** @type {string} */ name) => page.$eval('.tile[data-chair="west/1"]', (e, n) => e.getAttribute(n), name);
    await devices.vitals("west/1", { sbp: 195, dbp: 80 });
    await eventually(async () => (await attr("data-priority")) === "high", "west/1 red");
    assert.equal(await attr("data-flashing"), "high");
    const animation = await page.$eval('.tile[data-chair="west/1"]', (e) => getComputedStyle(e, "::after").animationName);
    assert.equal(animation, "blink");
    await page.screenshot({ path: join(ARTIFACTS, "firefox-alarm.png") });
    await page.click('.tile[data-chair="west/1"] .alarm-strip');
    await eventually(async () => (await attr("data-flashing")) === "none", "acknowledged");
    assert.deepEqual(errors, []);
  });
});
