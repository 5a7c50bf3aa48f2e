// The onboarding guide (seeds 000, "How to Onboard a Tenant") walked in a
// real browser: Debian's Chromium driven by playwright-core, against the
// server scripts/test.sh starts. Nothing downloads a browser.
//
// Environment (set by scripts/lib.sh run_browser_tests):
//   TENLYR_BASE            the server, e.g. http://127.0.0.1:41234
//   TENLYR_ADMIN_EMAIL     a super admin made with `tenlyr admin create-user`
//   TENLYR_ADMIN_PASSWORD  its password
//   TENLYR_ARTIFACTS       where screenshots go (one per page visited)
//   CHROMIUM               the browser (default /usr/bin/chromium)

import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac, randomUUID } from "node:crypto";
import { createServer } from "node:http";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { chromium } = require("../peers/node_modules/playwright-core");

const BASE = process.env.TENLYR_BASE;
const ADMIN_EMAIL = process.env.TENLYR_ADMIN_EMAIL;
const ADMIN_PASSWORD = process.env.TENLYR_ADMIN_PASSWORD;
const ARTIFACTS = process.env.TENLYR_ARTIFACTS || "target/test-artifacts/backoffice";
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const TIMEOUT = 15_000;

/// A loopback receiver standing in for the tenant's callback endpoint.
async function receiver() {
  const received = [];
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      received.push({ headers: req.headers, body: JSON.parse(body) });
      res.writeHead(200, { "content-type": "application/json" }).end('{"ok":true}');
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { url: `http://127.0.0.1:${server.address().port}/hooks/tenlyr`, received, server };
}

let shot = 0;
async function screenshot(page, name) {
  shot += 1;
  await page.screenshot({ path: join(ARTIFACTS, `${String(shot).padStart(2, "0")}-${name}.png`), fullPage: true });
}

async function rest(method, path, key, body) {
  const res = await fetch(`${BASE}${path}`, {
    method,
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

test("the onboarding guide, admin and tenant user, in Chromium", { timeout: 180_000 }, async () => {
  assert.ok(BASE && ADMIN_EMAIL && ADMIN_PASSWORD, "TENLYR_BASE, TENLYR_ADMIN_EMAIL and TENLYR_ADMIN_PASSWORD");
  mkdirSync(ARTIFACTS, { recursive: true });
  const hook = await receiver();
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const run = randomUUID().slice(0, 8);
  const pages = [];
  const slug = `acme-${run}`;
  const userEmail = `dev.lead+${run}@acme.test`;
  try {
    // ---------------------------------------------------------- admin
    const adminContext = await browser.newContext();
    const admin = await adminContext.newPage();
    pages.push(["admin", admin]);
    admin.setDefaultTimeout(TIMEOUT);
    const pageErrors = [];
    admin.on("pageerror", (err) => pageErrors.push(err.message));

    await admin.goto(`${BASE}/backoffice/`);
    await admin.getByRole("heading", { name: "Sign in" }).waitFor();
    await screenshot(admin, "sign-in");
    // A wrong password is refused where it happened, and nothing opens.
    await admin.getByLabel("Email").fill(ADMIN_EMAIL);
    await admin.getByLabel("Password").fill("not the password at all");
    await admin.getByRole("button", { name: "Sign in" }).click();
    await admin.getByTestId("error").filter({ hasText: "wrong email or password" }).waitFor();
    await screenshot(admin, "sign-in-refused");
    await admin.getByLabel("Password").fill(ADMIN_PASSWORD);
    await admin.getByRole("button", { name: "Sign in" }).click();

    // 1. Create the tenant: name, slug, plan, business time zone.
    await admin.getByRole("heading", { name: "Dashboard" }).waitFor();
    await admin.getByRole("link", { name: "Tenants", exact: true }).click();
    await admin.getByRole("heading", { name: "Tenants" }).waitFor();
    const create = admin.getByTestId("create-tenant");
    await create.getByLabel("Name").fill(`Acme ${run}`);
    await create.getByLabel("Slug").fill(slug);
    await create.getByLabel("Owner email").fill(`owner+${run}@acme.test`);
    await create.getByLabel("Plan").selectOption("growth");
    await create.getByLabel("Business time zone").fill("Europe/Berlin");
    await create.getByRole("button", { name: "Create tenant" }).click();
    const primaryKey = await admin.getByTestId("new-tenant-key").textContent();
    assert.match(primaryKey, /^tenlyr_live_/);
    await screenshot(admin, "tenant-created");
    await admin.getByRole("link", { name: `Open Acme ${run}` }).click();
    await admin.getByRole("heading", { name: `Acme ${run}` }).waitFor();
    const tenantId = admin.url().split("/tenants/")[1];

    // 2. Add the first tenant user (tenant-scoped role, not admin).
    const addUser = admin.getByTestId("add-user");
    await addUser.getByLabel("Email").fill(userEmail);
    await addUser.getByLabel("Role").selectOption("owner");
    await addUser.getByRole("button", { name: "Add user" }).click();
    const invite = await admin.getByTestId("invite-link").textContent();
    assert.match(invite, /\/backoffice\/#\/accept-invite\?token=/);

    // 3. A labeled API key.
    const createKey = admin.getByTestId("create-key");
    await createKey.getByLabel("Label").fill("production");
    await createKey.getByRole("button", { name: "Create key" }).click();
    assert.match(await admin.getByTestId("new-key").textContent(), /^tenlyr_live_/);
    await admin.getByRole("cell", { name: "production" }).waitFor();
    await screenshot(admin, "tenant-detail");

    // ---------------------------------------------------------- tenant user
    const userContext = await browser.newContext();
    await userContext.grantPermissions(["clipboard-read", "clipboard-write"], { origin: BASE });
    const user = await userContext.newPage();
    pages.push(["user", user]);
    user.setDefaultTimeout(TIMEOUT);
    user.on("pageerror", (err) => pageErrors.push(err.message));
    const inviteUrl = invite.startsWith("http") ? invite : `${BASE}${invite}`;
    await user.goto(inviteUrl);
    await user.getByRole("heading", { name: "Accept your invite" }).waitFor();
    await screenshot(user, "accept-invite");
    await user.getByLabel("New password").fill("tenant owner passphrase");
    await user.getByLabel("Repeat it").fill("tenant owner passphrase");
    await user.getByRole("button", { name: "Set password and sign in" }).click();

    // Signed in: its own tenant only, no admin surfaces.
    await user.getByTestId("tenant-home").waitFor();
    assert.match(await user.getByTestId("whoami").textContent(), new RegExp(userEmail.replace(/[+.]/g, "\\$&")));
    const nav = await user.locator("nav").textContent();
    assert.ok(!nav.includes("Tenants") && !nav.includes("Health"), nav);
    await screenshot(user, "tenant-home");
    await user.goto(`${BASE}/backoffice/#/tenants/${tenantId}`);
    await user.getByTestId("not-found").waitFor();
    await user.goto(`${BASE}/backoffice/#/webhooks/events/${randomUUID()}`);
    await user.getByTestId("not-found").waitFor();

    // Retrieve a key: create one for the integration and copy it.
    await user.goto(`${BASE}/backoffice/#/keys`);
    const keyForm = user.getByTestId("create-key");
    await keyForm.getByLabel("Label").fill("integration-test");
    await keyForm.getByRole("button", { name: "Create key" }).click();
    const shown = await user.getByTestId("new-key").textContent();
    await user.getByRole("button", { name: "Copy" }).click();
    const apiKey = await user.evaluate(() => navigator.clipboard.readText());
    assert.equal(apiKey, shown);
    await user.getByRole("cell", { name: "production" }).waitFor();
    await screenshot(user, "api-keys");

    // Webhook settings: callback URL and a generic-HMAC secret.
    await user.goto(`${BASE}/backoffice/#/webhooks`);
    const settings = user.getByTestId("webhook-settings");
    await settings.getByLabel(/Callback URL/).fill(hook.url);
    await settings.getByLabel("generic enabled").check();
    const secret = `generic-secret-${run}`;
    await settings.getByLabel("generic secret").fill(secret);
    await settings.getByRole("button", { name: "Save settings" }).click();
    await user.getByTestId("settings-saved").waitFor();
    assert.match(await user.getByTestId("signing-secret").textContent(), /\S{16,}/);
    const inbound = await user.getByTestId("inbound-generic").textContent();
    assert.ok(inbound.endsWith(`/v1/t/${slug}/webhooks/generic`), inbound);
    await screenshot(user, "webhook-settings");

    // ---------------------------------------------------------- first traffic
    // One /v1/record flow with the copied key: lock -> save -> get.
    const key = `order-${run}`;
    const locked = await rest("POST", "/v1/record/lock", apiKey, { key });
    assert.equal(locked.status, 200, JSON.stringify(locked.body));
    const saved = await rest("POST", "/v1/record/save", apiKey, {
      key,
      lockToken: locked.body.lockToken,
      data: { orderId: 42 },
    });
    assert.equal(saved.status, 200, JSON.stringify(saved.body));
    const got = await rest("GET", `/v1/record/${key}`, apiKey);
    assert.equal(got.body.state, "saved");
    // A usage event, so the home page's counters move.
    const tracked = await rest("POST", "/api/v1/usage/track", apiKey, { metric: "api_call", value: 3 });
    assert.equal(tracked.status, 200, JSON.stringify(tracked.body));

    // One signed webhook to the inbound URL the page showed.
    const body = JSON.stringify({ id: `evt_${run}`, type: "order.created", data: { orderId: 42 } });
    const t = Math.floor(Date.now() / 1000);
    const signature = createHmac("sha256", secret).update(`${t}.${body}`).digest("hex");
    const sent = await fetch(`${inbound.startsWith("http") ? "" : BASE}${inbound}`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-syllecta-signature": `t=${t},v1=${signature}` },
      body,
    });
    assert.equal(sent.status, 200, await sent.text());

    // Visible in Backoffice: the event reaches `processed`, and the
    // receiver got the forwarded, normalized payload.
    let processed = false;
    for (let i = 0; i < 40 && !processed; i++) {
      await user.goto(`${BASE}/backoffice/#/webhooks/events?at=${i}`);
      const row = user.getByRole("row").filter({ hasText: "generic" });
      await row.first().waitFor();
      processed = (await row.first().textContent()).includes("processed");
      if (!processed) await new Promise((r) => setTimeout(r, 500));
    }
    assert.ok(processed, "the webhook reached processed");
    await screenshot(user, "webhook-events");
    await user.getByRole("row").filter({ hasText: "generic" }).first().getByRole("link").click();
    await user.getByRole("heading", { name: /order\.created|generic\.order\.created/ }).waitFor();
    await user.getByRole("cell", { name: "200" }).first().waitFor();
    await screenshot(user, "webhook-event");
    assert.equal(hook.received.length, 1);
    assert.equal(hook.received[0].body.provider, "generic");
    assert.equal(hook.received[0].body.payload.id, `evt_${run}`);

    // The REST request shows too: the key it used has a last-use time now
    // (written within 2 s).
    let used = false;
    for (let i = 0; i < 20 && !used; i++) {
      await user.goto(`${BASE}/backoffice/#/keys?at=${i}`);
      const row = user.getByRole("row").filter({ hasText: "integration-test" });
      await row.waitFor();
      used = !(await row.getByRole("cell").nth(3).textContent()).includes("—");
      if (!used) await new Promise((r) => setTimeout(r, 500));
    }
    assert.ok(used, "the integration key's last use is shown");
    await screenshot(user, "api-keys-after-traffic");

    // Usage counters moved after the traffic.
    await user.goto(`${BASE}/backoffice/#/home`);
    await user.getByTestId("usage-api-calls").filter({ hasText: "3" }).waitFor();
    await screenshot(user, "tenant-home-after-traffic");

    // ---------------------------------------------------------- audit
    await admin.goto(`${BASE}/backoffice/#/audit?tenantId=${tenantId}`);
    await admin.getByRole("heading", { name: "Audit log" }).waitFor();
    for (const action of ["key.create", "webhook_settings.update", "user.create", "user.invite_accept"]) {
      await admin.getByRole("cell", { name: action, exact: true }).first().waitFor();
    }
    await screenshot(admin, "audit-log");
    await admin.goto(`${BASE}/backoffice/#/health`);
    await admin.getByRole("heading", { name: "Health" }).waitFor();
    await screenshot(admin, "health");

    // The session cookie is out of scripts' reach and never cross-site.
    const before = (await userContext.cookies(BASE)).find((c) => c.name === "tenlyr_session");
    assert.ok(before && before.httpOnly && before.sameSite === "Strict", JSON.stringify(before));

    // Signing out ends the session: the next page asks to sign in again.
    await user.getByRole("button", { name: "Sign out" }).click();
    await user.getByRole("heading", { name: "Sign in" }).waitFor();
    await user.goto(`${BASE}/backoffice/#/keys`);
    await user.getByRole("heading", { name: "Sign in" }).waitFor();
    const cookies = await userContext.cookies(BASE);
    const session = cookies.find((c) => c.name === "tenlyr_session");
    assert.ok(!session || !session.value, "the session cookie is cleared");

    assert.deepEqual(pageErrors, [], "no script errors in the pages");
  } catch (err) {
    // What each page showed when the walk failed.
    for (const [name, page] of pages) await screenshot(page, `failed-${name}`).catch(() => {});
    throw err;
  } finally {
    await browser.close();
    hook.server.close();
  }
});
