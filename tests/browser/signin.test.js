// Sign-in with `auth.mode = "jwt"`: the token from the URL fragment or pasted, who
// is signed in shown with their roles, controls only for roles that may use them,
// and back to sign-in when the token expires (close 4001).

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Broker, Devices, Gateway, browser, eventually, jwt, station } from "./harness.js";

const SECRET = "kb1e4f0c2a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4";

/**
 * Wait for `what` to show; if it does not, say what the page said meanwhile (its
 * errors and messages), which a timeout alone does not.
 * @param {import("playwright-core").Locator} what
 * @param {import("playwright-core").Page} page
 * @param {string[]} errors
 */
async function shown(what, page, errors) {
  try {
    await what.waitFor({ timeout: 10_000 });
  } catch (e) {
    const toasts = await page.locator("#toasts").innerText().catch(() => "?");
    throw new Error(`${e}\npage errors: ${JSON.stringify(errors)}\nmessages: ${toasts}`);
  }
}

describe("nurse station (auth jwt)", () => {
  /** @type {Broker} */ let broker;
  /** @type {Gateway} */ let gateway;
  /** @type {Devices} */ let devices;
  /** @type {import("playwright-core").Browser} */ let chromium;

  before(async () => {
    broker = await Broker.start();
    // No clock tolerance, so that a short-lived token expires when it says.
    gateway = await Gateway.start(broker, { jwtSecret: SECRET, env: { VITALGATE_AUTH__LEEWAY_S: "0" } });
    devices = await Devices.connect(broker);
    await devices.session("east/1", { phase: "baseline", patient: "P-1", route: "iv" });
    await devices.vitals("east/1", { hr: 70, spo2: 98, sbp: 120, dbp: 75 });
    chromium = await browser();
  });

  after(async () => {
    await chromium?.close();
    await devices?.close();
    await gateway?.stop();
    broker?.stop();
  });

  test("without a token the station asks for one and receives nothing", async () => {
    const { page, context } = await station(chromium, gateway.url);
    await page.locator("#signin").waitFor({ state: "visible" });
    assert.match(await page.locator("#signin-label").innerText(), /Access token/);
    assert.equal(await page.locator(".tile").count(), 0);
    // A refused token is said to be refused, and the form stays.
    await page.locator("#signin-field").fill("not-a-token");
    await page.locator("#signin-form button").click();
    await eventually(async () => /refused/.test(await page.locator("#signin-message").innerText()), "the refusal");
    // A good one pasted signs in.
    await page.locator("#signin-field").fill(jwt(SECRET, { sub: "nurse.ana", roles: ["nurse"] }));
    await page.locator("#signin-form button").click();
    await page.locator('.tile[data-chair="east/1"]').waitFor();
    assert.match(await page.locator("#user").innerText(), /nurse\.ana \(nurse\)/);
    await context.close();
  });

  test("a station that cannot reach the gateway says so and signs in by itself once it can", async () => {
    const token = jwt(SECRET, { sub: "nurse.ana", roles: ["nurse"] });
    const context = await chromium.newContext({ viewport: { width: 1920, height: 1080 } });
    const page = await context.newPage();
    await page.route("**/api/station", (route) => route.abort("connectionrefused"));
    await page.goto(`${gateway.url}/#token=${token}`);
    const message = page.locator("#signin-message");
    await eventually(async () => /^The gateway cannot be reached since .+: trying again by itself/.test(await message.innerText()), "the station says it waits");
    assert.equal(await page.locator("#signin-field").isVisible(), false, "nothing to type: the token from the link is kept");
    // A proxy in front of the gateway answering 502: the same.
    await page.unroute("**/api/station");
    await page.route("**/api/station", (route) => route.fulfill({ status: 502, body: "bad gateway" }));
    await eventually(async () => /^The gateway answers 502 since/.test(await message.innerText()), "the answer said");
    await page.unroute("**/api/station");
    await page.locator('.tile[data-chair="east/1"]').waitFor({ timeout: 15_000 });
    assert.match(await page.locator("#user").innerText(), /nurse\.ana \(nurse\)/);
    assert.equal(await page.locator("#signin").isVisible(), false);
    await context.close();
  });

  test("a viewer's token from the URL fragment sees the ward but no controls", async () => {
    const token = jwt(SECRET, { sub: "viewer.vic", roles: ["viewer"] });
    const { page, context, errors } = await station(chromium, `${gateway.url}/#token=${token}`);
    const tile = page.locator('.tile[data-chair="east/1"]');
    await tile.waitFor();
    assert.equal(new URL(page.url()).hash, "", "the token leaves the address bar");
    assert.match(await page.locator("#user").innerText(), /viewer\.vic \(viewer\)/);
    await tile.locator(".open").click();
    const dialog = page.locator("#chair-dialog");
    await shown(dialog, page, errors);
    assert.equal(await dialog.locator("button.step").count(), 0, "no session controls");
    await dialog.locator("tr[data-rule]").first().waitFor({ timeout: 10_000 });
    assert.equal(await dialog.locator("tr[data-rule] input, tr[data-rule] button").count(), 0, "no limit controls");
    assert.match(await dialog.innerText(), /may view this chair only/);
    await dialog.locator('button[value="close"]').click();
    // An alarm is shown; the viewer's click on it is told, in words, that the role
    // may not acknowledge, and acknowledges nothing.
    await devices.vitals("east/1", { sbp: 195, dbp: 80 });
    await eventually(async () => (await tile.getAttribute("data-priority")) === "high", "east/1 red");
    const strip = tile.locator(".alarm-strip");
    assert.equal(await strip.getAttribute("title"), "Your role may not acknowledge alarms");
    await strip.click();
    await eventually(async () => /Your role may not acknowledge alarms/.test(await page.locator("#toasts").innerText()), "the refusal in words");
    assert.equal(await strip.getAttribute("data-state"), "raised", "not acknowledged");
    await devices.vitals("east/1", { sbp: 120, dbp: 75 });
    await context.close();
  });

  test("a nurse gets session controls and sees the limits; a clinician can change the limits", async () => {
    for (const [role, limits] of /** @type {const} */ ([["nurse", 0], ["clinician", 1]])) {
      const token = jwt(SECRET, { sub: `${role}.x`, roles: [role] });
      const { page, context, errors } = await station(chromium, `${gateway.url}/#token=${token}`);
      const tile = page.locator('.tile[data-chair="east/1"]');
      await tile.waitFor();
      await tile.locator(".open").click();
      const dialog = page.locator("#chair-dialog");
      await shown(dialog.locator('button[data-phase="infusion"]'), page, errors);
      assert.match(await dialog.locator('tr[data-rule="sbp_critical"][data-side="high"]').innerText(), /SBP above\s+sbp_critical \(high\)\s+180/, `${role} sees the limit in force`);
      const controls = await dialog.locator("tr[data-rule] input").count();
      assert.equal(controls > 0 ? 1 : 0, limits, `${role}: ${controls} limit fields in ${await dialog.innerText()}`);
      await context.close();
    }
  });

  test("an expired token closes the connection (4001) and returns to sign-in", async () => {
    const token = jwt(SECRET, { sub: "nurse.short", roles: ["nurse"], exp: Math.floor(Date.now() / 1000) + 4 });
    const { page, context } = await station(chromium, `${gateway.url}/#token=${token}`);
    await page.locator('.tile[data-chair="east/1"]').waitFor();
    await page.locator("#signin").waitFor({ state: "visible", timeout: 15_000 });
    assert.match(await page.locator("#signin-message").innerText(), /expired/);
    assert.equal(await page.locator("#disconnected-banner").isVisible(), true, "NOT CONNECTED while signed out");
    await context.close();
  });
});
