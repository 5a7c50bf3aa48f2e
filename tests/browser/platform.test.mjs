// Settings → Webhooks for platform events and the live dashboard, in a
// real browser (Debian's Chromium, playwright-core), against the server
// scripts/test.sh starts. Same environment as onboarding.test.mjs.

import { test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { createServer } from "node:http";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath, pathToFileURL } from "node:url";

const require = createRequire(import.meta.url);
const { chromium } = require("../peers/node_modules/playwright-core");

const BASE = process.env.TENLYR_BASE;
const ADMIN_EMAIL = process.env.TENLYR_ADMIN_EMAIL;
const ADMIN_PASSWORD = process.env.TENLYR_ADMIN_PASSWORD;
const ARTIFACTS = join(process.env.TENLYR_ARTIFACTS || "target/test-artifacts/backoffice", "platform");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const PEERS = fileURLToPath(new URL("../peers/", import.meta.url));
const TIMEOUT = 15_000;

/// A loopback receiver whose answer the test chooses.
async function receiver() {
  const state = { status: 200, received: [] };
  const server = createServer((req, res) => {
    let raw = "";
    req.on("data", (chunk) => (raw += chunk));
    req.on("end", () => {
      state.received.push({ headers: req.headers, raw });
      res.writeHead(state.status, { "content-type": "text/plain" }).end(state.status === 200 ? "thanks" : "receiver down");
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  state.url = `http://127.0.0.1:${server.address().port}/platform-events`;
  state.server = server;
  return state;
}

let shot = 0;
async function screenshot(page, name) {
  shot += 1;
  await page.screenshot({ path: join(ARTIFACTS, `${String(shot).padStart(2, "0")}-${name}.png`), fullPage: true });
}

async function until(what, check, { tries = 40, every = 500 } = {}) {
  for (let i = 0; i < tries; i++) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, every));
  }
  assert.fail(`timed out waiting for ${what}`);
}

async function signIn(page, email, password) {
  await page.goto(`${BASE}/backoffice/#/login`);
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
}

test("platform webhooks and the live dashboard, in Chromium", { timeout: 240_000 }, async () => {
  assert.ok(BASE && ADMIN_EMAIL && ADMIN_PASSWORD, "TENLYR_BASE, TENLYR_ADMIN_EMAIL and TENLYR_ADMIN_PASSWORD");
  mkdirSync(ARTIFACTS, { recursive: true });
  const hook = await receiver();
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const run = randomUUID().slice(0, 8);
  const pages = [];
  const snippetFile = join(PEERS, `.snippet-${run}.mjs`);
  try {
    const admin = await (await browser.newContext()).newPage();
    admin.setDefaultTimeout(TIMEOUT);
    pages.push(["admin", admin]);
    const pageErrors = [];
    admin.on("pageerror", (err) => pageErrors.push(err.message));
    await signIn(admin, ADMIN_EMAIL, ADMIN_PASSWORD);
    await admin.getByRole("heading", { name: "Dashboard" }).waitFor();

    // ------------------------------------------------ Settings → Webhooks
    await admin.getByRole("link", { name: "Settings → Webhooks" }).click();
    await admin.getByRole("heading", { name: "Settings → Webhooks" }).waitFor();
    const create = admin.getByTestId("create-endpoint");
    // A URL the SSRF guard refuses says why, where it was entered.
    await create.getByLabel("URL").fill("http://169.254.169.254/latest/meta-data");
    await create.getByRole("button", { name: "Add endpoint" }).click();
    const refusal = await create.getByTestId("error").textContent();
    assert.match(refusal, /url|address|allowed|private|link-local/i, refusal);
    await screenshot(admin, "endpoint-refused");

    await create.getByLabel("URL").fill(hook.url);
    await create.getByLabel(/Event types/).fill("webhook.test");
    await create.getByLabel("Description").fill(`browser test ${run}`);
    await create.getByRole("button", { name: "Add endpoint" }).click();
    const secret = await admin.getByTestId("endpoint-secret").textContent();
    assert.match(secret, /^whsec_/);
    await admin.getByRole("cell", { name: `browser test ${run}` }).waitFor();
    await screenshot(admin, "endpoints");
    await admin.getByRole("link", { name: "Open it →" }).click();
    await admin.getByRole("heading", { name: hook.url }).waitFor();
    const endpointPath = admin.url().split("#")[1];

    // A test event, delivered, with its attempt.
    await admin.getByTestId("send-test").click();
    await admin.getByTestId("test-sent").waitFor();
    await until("the test event delivered", async () => {
      await admin.getByTestId("refresh").click();
      return (await admin.getByRole("row").filter({ hasText: "webhook.test" }).first().textContent()).includes("delivered");
    });
    await admin.getByRole("row").filter({ hasText: "webhook.test" }).first().getByRole("button", { name: "Attempts" }).click();
    await admin.getByTestId("attempts").getByRole("cell", { name: "200" }).waitFor();
    await screenshot(admin, "delivered");

    // The page's verification snippet accepts the real delivery, both schemes.
    assert.equal(hook.received.length, 1);
    writeFileSync(snippetFile, await admin.getByTestId("snippet").textContent());
    const { verifyTenlyr, verifyStandard } = await import(pathToFileURL(snippetFile).href);
    const delivery = hook.received[0];
    assert.equal(verifyTenlyr(delivery.raw, delivery.headers["tenlyr-signature"], secret), true);
    assert.equal(verifyTenlyr(delivery.raw + " ", delivery.headers["tenlyr-signature"], secret), false);
    assert.equal(verifyStandard(delivery.raw, delivery.headers, secret).type, "webhook.test");

    // The receiver fails: the delivery is retried (5 s later) and stays pending.
    hook.status = 500;
    await admin.getByTestId("send-test").click();
    await until(
      "a retry after the failure",
      async () => {
        await admin.getByTestId("refresh").click();
        const row = admin.getByRole("row").filter({ hasText: "pending" }).first();
        return (await row.count()) > 0 && (await row.getByRole("cell").nth(3).textContent()) === "2";
      },
      { tries: 30 },
    );
    await admin.getByRole("row").filter({ hasText: "pending" }).first().getByRole("button", { name: "Attempts" }).click();
    await admin.getByTestId("attempts").getByRole("cell", { name: "500" }).first().waitFor();
    await screenshot(admin, "retrying");

    // Disable (its pending delivery fails), fix the receiver, enable, recover.
    await admin.getByRole("button", { name: "Disable" }).click();
    await admin.getByRole("button", { name: "Enable" }).waitFor();
    await admin.getByRole("row").filter({ hasText: "failed" }).first().waitFor();
    hook.status = 200;
    await admin.getByRole("button", { name: "Enable" }).click();
    await admin.getByRole("button", { name: "Disable" }).waitFor();
    await admin.getByTestId("recover").getByRole("button", { name: "Recover" }).click();
    assert.match(await admin.getByTestId("recovered").textContent(), /^[1-9]\d* deliveries queued again/);
    await until("the recovered delivery delivered", async () => {
      await admin.getByTestId("refresh").click();
      const rows = admin.getByRole("row").filter({ hasText: "webhook.test" });
      const texts = await rows.allTextContents();
      return texts.length === 2 && texts.every((t) => t.includes("delivered"));
    });
    await screenshot(admin, "recovered");

    // Rotation shows the grace period.
    await admin.getByRole("button", { name: "Rotate secret" }).click();
    assert.match(await admin.getByTestId("rotated-secret").textContent(), /^whsec_/);
    await admin.getByText("still signing").waitFor();
    await screenshot(admin, "rotated");

    // ------------------------------------------------ the dashboard
    // A tenant to watch, created in the UI (its key shown once).
    await admin.goto(`${BASE}/backoffice/#/tenants`);
    const form = admin.getByTestId("create-tenant");
    await form.getByLabel("Name").fill(`Dash ${run}`);
    await form.getByLabel("Slug").fill(`dash-${run}`);
    await form.getByLabel("Owner email").fill(`owner+${run}@dash.test`);
    await form.getByRole("button", { name: "Create tenant" }).click();
    const tenantKey = await admin.getByTestId("new-tenant-key").textContent();
    const tenantLink = await admin.getByRole("link", { name: `Open Dash ${run}` }).getAttribute("href");

    await admin.goto(`${BASE}/backoffice/#/dashboard?refresh=2`);
    const row = admin.locator("tr", { hasText: `Dash ${run}` });
    await row.waitFor();
    await admin.getByTestId("overview").getByText("Tenants").waitFor();
    // Sort by API calls, descending; the page is marked to prove no reload.
    await admin.getByRole("button", { name: "API calls" }).click();
    await admin.getByRole("button", { name: /API calls ▲/ }).click();
    await admin.evaluate(() => (window.__stillHere = true));
    const apiCalls = () => row.getByRole("cell").nth(3).textContent();
    assert.match(await apiCalls(), /^0/);
    await screenshot(admin, "dashboard-before");

    const tracked = await fetch(`${BASE}/api/v1/usage/track`, {
      method: "POST",
      headers: { authorization: `Bearer ${tenantKey}`, "content-type": "application/json" },
      body: JSON.stringify({ metric: "api_call", value: 7 }),
    });
    assert.equal(tracked.status, 200, await tracked.text());
    await until("the tracked usage on the dashboard", async () => (await apiCalls()).startsWith("7"), { tries: 20 });
    assert.equal(await admin.evaluate(() => window.__stillHere), true, "refreshed in place, no page load");
    assert.equal(
      await admin.getByRole("columnheader", { name: /API calls/ }).getAttribute("aria-sort"),
      "descending",
      "the sort survives the refresh",
    );
    await screenshot(admin, "dashboard-after");
    await row.getByRole("link").click();
    await admin.getByRole("heading", { name: `Dash ${run}` }).waitFor();
    assert.equal(admin.url().split("#")[1], tenantLink.slice(1));

    // ------------------------------------------------ plan and own limits
    // Enterprise with an own limit of 7 calls: the 7 tracked above fill it.
    const limits = admin.getByTestId("plan-limits");
    await limits.getByLabel("Plan").selectOption("enterprise");
    await limits.getByLabel("Own API call limit").fill("7");
    await limits.getByRole("button", { name: "Save plan and limits" }).click();
    await admin.getByTestId("limits-saved").waitFor();
    assert.match(await admin.getByTestId("limits-in-force").textContent(), /In force each period: 7 API calls, unlimited storage, unlimited seats/);
    const over = await fetch(`${BASE}/api/v1/usage/track`, {
      method: "POST",
      headers: { authorization: `Bearer ${tenantKey}`, "content-type": "application/json" },
      body: JSON.stringify({ metric: "api_call", value: 1 }),
    });
    assert.equal(over.status, 400, "the own limit holds");
    assert.equal((await over.json()).reason, "PLAN_LIMIT_EXCEEDED");
    await screenshot(admin, "plan-limits");
    // Cleared: enterprise has no limit of its own plan.
    await limits.getByLabel("Own API call limit").fill("");
    await limits.getByRole("button", { name: "Save plan and limits" }).click();
    await until("the cleared limit", async () =>
      /In force each period: unlimited API calls/.test(await admin.getByTestId("limits-in-force").textContent()),
    );

    // ------------------------------------------------ not for tenant users
    const addUser = admin.getByTestId("add-user");
    await addUser.getByLabel("Email").fill(`viewer+${run}@dash.test`);
    await addUser.getByLabel("Role").selectOption("owner");
    await addUser.getByRole("button", { name: "Add user" }).click();
    const invite = await admin.getByTestId("invite-link").textContent();
    const tenant = await (await browser.newContext()).newPage();
    tenant.setDefaultTimeout(TIMEOUT);
    pages.push(["tenant", tenant]);
    tenant.on("pageerror", (err) => pageErrors.push(err.message));
    await tenant.goto(invite);
    await tenant.getByLabel("New password").fill("a tenant owner passphrase");
    await tenant.getByLabel("Repeat it").fill("a tenant owner passphrase");
    await tenant.getByRole("button", { name: "Set password and sign in" }).click();
    await tenant.getByTestId("tenant-home").waitFor();
    for (const path of ["/settings/webhooks", endpointPath, "/dashboard"]) {
      await tenant.goto(`${BASE}/backoffice/#${path}`);
      await tenant.getByTestId("not-found").waitFor();
      const text = await tenant.locator("body").textContent();
      assert.ok(!text.includes(hook.url) && !text.includes("Usage cost"), `${path}: ${text}`);
    }
    // The API says the same.
    const cookie = (await tenant.context().cookies(BASE)).find((c) => c.name === "tenlyr_session");
    for (const path of ["/api/v1/webhook-endpoints", "/api/v1/tenants/dashboard", "/api/v1/health/overview"]) {
      const res = await fetch(`${BASE}${path}`, { headers: { cookie: `tenlyr_session=${cookie.value}` } });
      assert.equal(res.status, 403, path);
    }
    await screenshot(tenant, "tenant-refused");

    assert.deepEqual(pageErrors, [], "no script errors in the pages");
  } catch (err) {
    for (const [name, page] of pages) await screenshot(page, `failed-${name}`).catch(() => {});
    throw err;
  } finally {
    rmSync(snippetFile, { force: true });
    await browser.close();
    hook.server.close();
  }
});
