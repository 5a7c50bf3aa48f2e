// The SDK against a real Tenlyr server (scripts/test.sh starts one and sets
// TENLYR_SDK_TEST_URL and TENLYR_SDK_TEST_ADMIN_KEY), plus the failures a
// server cannot be made to produce on cue (a hanging or unreachable peer,
// a 503) through an injected fetch.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  Tenlyr,
  TenlyrError,
  AuthenticationError,
  PermissionError,
  NotFoundError,
  ConflictError,
  InvalidRequestError,
  ValidationError,
  RateLimitError,
  TenlyrTimeoutError,
  TenlyrNetworkError,
  TenlyrNotImplementedError,
  VERSION,
  verifySignature,
  verifyStandardWebhook,
} from "../dist/index.js";
import { createServer } from "node:http";

const baseUrl = process.env.TENLYR_SDK_TEST_URL;
const adminKey = process.env.TENLYR_SDK_TEST_ADMIN_KEY;
if (!baseUrl || !adminKey) {
  throw new Error("set TENLYR_SDK_TEST_URL and TENLYR_SDK_TEST_ADMIN_KEY (scripts/test.sh does)");
}
const admin = new Tenlyr({ apiKey: adminKey, baseUrl });
const unique = () => `${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;

test("tenants: the whole lifecycle", async () => {
  const email = `sdk-${unique()}@sdk.test`;
  const { tenant, apiKey } = await admin.tenants.create({ name: "SDK Corp", ownerEmail: email, plan: "growth" });
  assert.equal(tenant.ownerEmail, email);
  assert.equal(tenant.plan, "growth");
  assert.match(apiKey, /^tenlyr_live_/);
  assert.equal((await admin.tenants.get(tenant.id)).id, tenant.id);
  const page = await admin.tenants.list({ limit: 100 });
  assert.ok(Array.isArray(page.data));
  assert.ok("nextCursor" in page);
  const dashboard = await admin.tenants.health({ limit: 100 });
  assert.ok(Array.isArray(dashboard));
  assert.equal((await admin.tenants.update(tenant.id, { name: "SDK Corp 2" })).name, "SDK Corp 2");
  assert.equal((await admin.tenants.changePlan(tenant.id, "scale")).plan, "scale");
  const own = await admin.tenants.setLimits(tenant.id, { apiCalls: 5000, seats: 7 });
  assert.deepEqual([own.ownApiCalls, own.apiCallLimit, own.seatsLimit], ["5000", "5000", "7"]);
  assert.equal((await admin.tenants.limits(tenant.id)).ownSeats, "7");
  assert.equal((await admin.tenants.setLimits(tenant.id, {})).apiCallLimit, "1000000", "scale's own again");
  const suspended = await admin.tenants.suspend(tenant.id, "unpaid");
  assert.equal(suspended.status, "suspended");
  assert.equal((await admin.tenants.reactivate(tenant.id)).status, "active");
  const rotated = await admin.tenants.rotateApiKey(tenant.id);
  assert.notEqual(rotated.apiKey, apiKey);
  assert.equal((await admin.tenants.terminate(tenant.id)).status, "terminated");
  assert.equal(await admin.tenants.delete(tenant.id), undefined);
  await assert.rejects(admin.tenants.get(tenant.id), NotFoundError);
});

test("usage: track, metrics, summary, events with the tenant's key", async () => {
  const { apiKey } = await admin.tenants.create({ name: "Usage Co", ownerEmail: `usage-${unique()}@sdk.test` });
  const event = await admin.usage.track({ tenantKey: apiKey, metric: "api_call", value: 2, endpoint: "/v1/orders" });
  assert.equal(event.metric, "api_call");
  assert.equal(event.endpoint, "/v1/orders");
  await admin.usage.track({ tenantKey: apiKey, metric: "api_call", value: 1 });
  const metrics = await admin.usage.metrics(apiKey);
  assert.equal(metrics.apiCalls, "3");
  const summary = await admin.usage.summary(apiKey);
  assert.ok(summary);
  const events = await admin.usage.events(apiKey, 10);
  assert.equal(events.length, 2);
});

test("health, alerts and billing", async () => {
  const { tenant, apiKey } = await admin.tenants.create({ name: "Health Co", ownerEmail: `health-${unique()}@sdk.test` });
  const overview = await admin.health.overview();
  assert.equal(typeof overview.total, "number");
  assert.ok(Array.isArray(await admin.health.list()));
  assert.equal((await admin.health.get(tenant.id)).tenantId, tenant.id);
  assert.equal((await admin.health.throttle(tenant.id, 120)).rateLimit, 120);
  assert.equal((await admin.health.removeThrottle(tenant.id)).rateLimit, null);
  const alert = await admin.alerts.create({ tenantId: tenant.id, type: "disk_usage", severity: "warning", message: "disk almost full" });
  assert.equal(alert.resolved, false);
  assert.ok((await admin.alerts.unresolved({ tenantId: tenant.id })).some((a) => a.id === alert.id));
  assert.equal((await admin.alerts.resolve(alert.id)).resolved, true);
  assert.ok((await admin.alerts.list({ tenantId: tenant.id })).length >= 1);
  assert.equal(typeof (await admin.alerts.resolveAll({ tenantId: tenant.id })).resolved, "number");
  // The documented signatures: list(key?), unresolved(key?), resolveAll(key?)
  // with the tenant's own key see and resolve only that tenant's alerts.
  const open = await admin.alerts.create({ tenantId: tenant.id, type: "error_rate", severity: "critical", message: "5xx" });
  const { tenant: other } = await admin.tenants.create({ name: "Other Co", ownerEmail: `other-${unique()}@sdk.test` });
  const theirs = await admin.alerts.create({ tenantId: other.id, type: "error_rate", severity: "warning", message: "x" });
  const mine = await admin.alerts.unresolved(apiKey);
  assert.deepEqual(mine.map((a) => a.id), [open.id]);
  assert.ok((await admin.alerts.list(apiKey)).every((a) => a.tenantId === tenant.id));
  assert.equal((await admin.alerts.resolveAll(apiKey)).resolved, 1);
  assert.deepEqual(await admin.alerts.unresolved(apiKey), []);
  assert.ok((await admin.alerts.unresolved({ tenantId: other.id })).some((a) => a.id === theirs.id));
  const billing = await admin.billing.get(apiKey);
  assert.equal(billing.tenantId, tenant.id);
});

test("every error class, from the real server", async () => {
  const bad = new Tenlyr({ apiKey: "tenlyr_live_not_a_real_key", baseUrl, retries: 0 });
  await assert.rejects(bad.tenants.list(), (err) => err instanceof AuthenticationError && err.statusCode === 401);
  const { tenant, apiKey } = await admin.tenants.create({ name: "Errors Co", ownerEmail: `errors-${unique()}@sdk.test` });
  const asTenant = new Tenlyr({ apiKey, baseUrl, retries: 0 });
  await assert.rejects(asTenant.tenants.list(), PermissionError);
  await assert.rejects(admin.tenants.get("00000000-0000-7000-8000-000000000000"), NotFoundError);
  await assert.rejects(
    admin.tenants.create({ name: "Errors Co", ownerEmail: tenant.ownerEmail }),
    (err) => err instanceof ConflictError && err.statusCode === 409,
  );
  await assert.rejects(admin.tenants.create({ name: "x", ownerEmail: "not-an-email" }), (err) => {
    assert.ok(err instanceof InvalidRequestError);
    assert.ok(err instanceof ValidationError, "the docs name it ValidationError");
    assert.ok(Array.isArray(err.body.details), JSON.stringify(err.body));
    return true;
  });
  // A throttle of 1 request per minute: the second track is a 429.
  await admin.health.throttle(tenant.id, 1);
  const noRetry = new Tenlyr({ apiKey: adminKey, baseUrl, retries: 0 });
  await noRetry.usage.track({ tenantKey: apiKey, metric: "api_call", value: 1 });
  await assert.rejects(noRetry.usage.track({ tenantKey: apiKey, metric: "api_call", value: 1 }), (err) => {
    assert.ok(err instanceof RateLimitError);
    assert.ok(err.retryAfter >= 1, `retryAfter ${err.retryAfter}`);
    return true;
  });
  for (const cls of [AuthenticationError, PermissionError, NotFoundError, ConflictError, InvalidRequestError,
                     RateLimitError, TenlyrTimeoutError, TenlyrNetworkError, TenlyrNotImplementedError]) {
    assert.ok(new cls("x") instanceof TenlyrError, cls.name);
  }
});

/** A fetch that answers from a script of responses (or throws), recording each call. */
function scripted(steps) {
  const seen = [];
  const fn = async (url, init) => {
    seen.push({ url: String(url), init, at: Date.now() });
    const step = steps[Math.min(seen.length - 1, steps.length - 1)];
    if (step === "network") throw new TypeError("fetch failed: ECONNREFUSED");
    if (step === "hang") {
      return new Promise((_, reject) => init.signal.addEventListener("abort", () => reject(new Error("aborted"))));
    }
    return new Response(JSON.stringify(step.body ?? {}), {
      status: step.status,
      headers: { "content-type": "application/json", ...(step.headers ?? {}) },
    });
  };
  return { fn, seen };
}

test("retries 5xx and network failures with exponential back-off, one Idempotency-Key", async () => {
  const { fn, seen } = scripted([
    { status: 503, body: { message: "busy" } },
    "network",
    { status: 500, body: { message: "oops" } },
    { status: 200, body: { tenant: { id: "t1" }, apiKey: "tenlyr_live_x" } },
  ]);
  const client = new Tenlyr({ apiKey: "tenlyr_live_tf_x", baseUrl: "http://sdk.test", retries: 3, retryDelay: 20, fetchFn: fn });
  const reply = await client.tenants.create({ name: "Retry Co", ownerEmail: "r@sdk.test" });
  assert.equal(reply.tenant.id, "t1");
  assert.equal(seen.length, 4);
  const keys = new Set(seen.map((s) => s.init.headers["idempotency-key"]));
  assert.equal(keys.size, 1, "every attempt of one call carries the same Idempotency-Key");
  assert.match([...keys][0], /^[0-9a-f-]{36}$/);
  assert.equal(seen[0].init.headers["user-agent"], `tenlyr-sdk/${VERSION}`);
  assert.equal(seen[0].init.headers.authorization, "Bearer tenlyr_live_tf_x");
  const gaps = seen.slice(1).map((s, i) => s.at - seen[i].at);
  assert.ok(gaps[0] >= 18 && gaps[1] >= 38 && gaps[2] >= 78, `back-off 20, 40, 80 ms: ${gaps}`);

  // 501 is its own class, and not retried (no route answers it now;
  // a server older or newer than the SDK may).
  const unbuilt = scripted([{ status: 501, body: { message: "not implemented", statusCode: 501 } }]);
  const once = new Tenlyr({ apiKey: "k", baseUrl: "http://sdk.test", retries: 3, retryDelay: 1, fetchFn: unbuilt.fn });
  await assert.rejects(once.tenants.list(), TenlyrNotImplementedError);
  assert.equal(unbuilt.seen.length, 1);

  const exhausted = scripted([{ status: 502, body: { message: "bad gateway" } }]);
  const few = new Tenlyr({ apiKey: "k", baseUrl: "http://sdk.test", retries: 2, retryDelay: 1, fetchFn: exhausted.fn });
  await assert.rejects(few.tenants.list(), (err) => err instanceof TenlyrError && err.statusCode === 502);
  assert.equal(exhausted.seen.length, 3);

  const down = scripted(["network"]);
  const offline = new Tenlyr({ apiKey: "k", baseUrl: "http://sdk.test", retries: 1, retryDelay: 1, fetchFn: down.fn });
  await assert.rejects(offline.tenants.list(), TenlyrNetworkError);
  assert.equal(down.seen.length, 2, "a network failure is retried");
});

test("a timeout is not retried; a 429 waits for Retry-After", async () => {
  const hang = scripted(["hang"]);
  const slow = new Tenlyr({ apiKey: "k", baseUrl: "http://sdk.test", timeout: 50, retries: 3, fetchFn: hang.fn });
  await assert.rejects(slow.tenants.list(), TenlyrTimeoutError);
  assert.equal(hang.seen.length, 1);

  const limited = scripted([
    { status: 429, body: { message: "slow down" }, headers: { "retry-after": "1" } },
    { status: 200, body: { data: [], nextCursor: null } },
  ]);
  const patient = new Tenlyr({ apiKey: "k", baseUrl: "http://sdk.test", retryDelay: 1, fetchFn: limited.fn });
  const started = Date.now();
  assert.deepEqual(await patient.tenants.list(), { data: [], nextCursor: null });
  assert.ok(Date.now() - started >= 950, "waited for Retry-After");
});

test("isolation: real moves to dedicated_schema then dedicated_database, awaited with waitForMigration", async () => {
  const { tenant, apiKey } = await admin.tenants.create({ name: "SDK Isolation", ownerEmail: `iso-${unique()}@sdk.test` });
  await admin.usage.track({ tenantKey: apiKey, metric: "api_call", value: 3 });
  const started = await admin.isolation.migrate(tenant.id, { targetLevel: "dedicated_schema" });
  assert.equal(started.status, "pending");
  assert.equal(started.fromLevel, "shared_schema");
  const done = await admin.isolation.waitForMigration(started.id, { pollIntervalMs: 100, timeoutMs: 30_000 });
  assert.equal(done.status, "completed");
  assert.equal(done.toLevel, "dedicated_schema");
  assert.equal((await admin.tenants.get(tenant.id)).isolationLevel, "dedicated_schema");
  assert.deepEqual((await admin.isolation.migrations(apiKey)).map((m) => m.id), [started.id]);
  assert.equal(Number((await admin.usage.metrics(apiKey)).apiCalls), 3);
  await assert.rejects(admin.isolation.migrate(tenant.id, { targetLevel: "dedicated_schema" }), InvalidRequestError);
  // On to its own database (on the server's main PostgreSQL, the default).
  const next = await admin.isolation.migrate(tenant.id, { targetLevel: "dedicated_database" });
  const moved = await admin.isolation.waitForMigration(next.id, { pollIntervalMs: 100, timeoutMs: 60_000 });
  assert.equal(moved.toLevel, "dedicated_database");
  assert.equal((await admin.tenants.get(tenant.id)).isolationLevel, "dedicated_database");
  await admin.usage.track({ tenantKey: apiKey, metric: "api_call", value: 1 });
  assert.equal(Number((await admin.usage.metrics(apiKey)).apiCalls), 4);
  await admin.tenants.delete(tenant.id);
});

test("waitForMigration polls until completed, throws on failed and on timeout", async () => {
  const migration = (status, extra = {}) => ({
    status: 200,
    body: { id: "m1", tenantId: "t1", fromLevel: "shared_schema", toLevel: "dedicated_schema", status, error: null, ...extra },
  });
  const ok = scripted([migration("pending"), migration("in_progress"), migration("completed")]);
  const client = new Tenlyr({ apiKey: "k", baseUrl: "http://sdk.test", fetchFn: ok.fn });
  const done = await client.isolation.waitForMigration("m1", { pollIntervalMs: 5, timeoutMs: 1000 });
  assert.equal(done.status, "completed");
  assert.equal(ok.seen.length, 3);
  assert.ok(ok.seen.every((s) => s.url.endsWith("/api/v1/isolation/migrations/m1")));

  const bad = scripted([migration("in_progress"), migration("failed", { error: "checksum mismatch" })]);
  const failing = new Tenlyr({ apiKey: "k", baseUrl: "http://sdk.test", fetchFn: bad.fn });
  await assert.rejects(failing.isolation.waitForMigration("m1", { pollIntervalMs: 5 }), /checksum mismatch/);

  const stuck = scripted([migration("in_progress")]);
  const waiting = new Tenlyr({ apiKey: "k", baseUrl: "http://sdk.test", fetchFn: stuck.fn });
  await assert.rejects(waiting.isolation.waitForMigration("m1", { pollIntervalMs: 10, timeoutMs: 50 }), TenlyrTimeoutError);
});

test("tenants.health() merges every page of the dashboard, as the docs say", async () => {
  const row = (id) => ({ id, name: id, status: "active" });
  const pages = scripted([
    { status: 200, body: { data: [row("t1"), row("t2")], nextCursor: "c2" } },
    { status: 200, body: { data: [row("t3")], nextCursor: null } },
  ]);
  const client = new Tenlyr({ apiKey: "k", baseUrl: "http://sdk.test", fetchFn: pages.fn });
  assert.deepEqual((await client.tenants.health()).map((t) => t.id), ["t1", "t2", "t3"]);
  assert.equal(pages.seen.length, 2);
  assert.ok(pages.seen[1].url.includes("cursor=c2"), pages.seen[1].url);
  // An explicit page is just that page.
  const one = scripted([{ status: 200, body: { data: [row("t1")], nextCursor: "c2" } }]);
  const paged = new Tenlyr({ apiKey: "k", baseUrl: "http://sdk.test", fetchFn: one.fn });
  assert.deepEqual((await paged.tenants.health({ limit: 1 })).map((t) => t.id), ["t1"]);
  assert.equal(one.seen.length, 1);
});

test("the docs' Quickstart, as written, against the server", async () => {
  const tenlyr = new Tenlyr({ apiKey: adminKey, baseUrl });
  const { tenant, apiKey } = await tenlyr.tenants.create({
    name: "Acme Corp",
    ownerEmail: `quickstart-${unique()}@acme.test`,
    plan: "growth",
  });
  await tenlyr.usage.track({ tenantKey: apiKey, metric: "api_call", value: 1, endpoint: "/v1/orders" });
  const metrics = await tenlyr.usage.metrics(apiKey);
  assert.equal(metrics.apiCalls, "1");
  assert.equal(metrics.tenantId, tenant.id);
});

test("the webhook helpers verify a real delivery, both schemes", async () => {
  // A receiver on loopback (the test server allows 127.0.0.0/8).
  let resolveDelivery;
  const delivered = new Promise((resolve) => (resolveDelivery = resolve));
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      res.writeHead(204).end();
      resolveDelivery({ headers: req.headers, body });
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  try {
    const url = `http://127.0.0.1:${server.address().port}/hook`;
    const created = await fetch(`${baseUrl}/api/v1/webhook-endpoints`, {
      method: "POST",
      headers: { authorization: `Bearer ${adminKey}`, "content-type": "application/json" },
      body: JSON.stringify({ url, eventTypes: ["webhook.test"] }),
    }).then((r) => r.json());
    assert.match(created.secret, /^whsec_/, JSON.stringify(created));
    const sent = await fetch(`${baseUrl}/api/v1/webhook-endpoints/${created.endpoint.id}/test`, {
      method: "POST",
      headers: { authorization: `Bearer ${adminKey}`, "content-type": "application/json" },
      body: "{}",
    });
    assert.equal(sent.status, 200);
    const { headers, body } = await delivered;
    assert.equal(JSON.parse(body).type, "webhook.test");
    assert.equal(await verifySignature(body, headers["tenlyr-signature"], created.secret), true);
    assert.equal(await verifyStandardWebhook(body, headers, created.secret), true);
    // Tampered, wrong secret, stale: refused.
    assert.equal(await verifySignature(body + " ", headers["tenlyr-signature"], created.secret), false);
    assert.equal(await verifySignature(body, headers["tenlyr-signature"], "whsec_other"), false);
    const later = Number(headers["webhook-timestamp"]) + 301;
    assert.equal(await verifySignature(body, headers["tenlyr-signature"], created.secret, { now: later }), false);
    assert.equal(await verifyStandardWebhook(body.replace("webhook.test", "webhook.tost"), headers, created.secret), false);
    assert.equal(await verifyStandardWebhook(body, headers, created.secret, { now: later }), false);
    await fetch(`${baseUrl}/api/v1/webhook-endpoints/${created.endpoint.id}`, {
      method: "DELETE",
      headers: { authorization: `Bearer ${adminKey}` },
    });
  } finally {
    server.close();
  }
});
