// @tenlyr/sdk: a thin, typed wrapper over the Tenlyr REST API.
//
// Every data type below comes from `schema.d.ts`, generated from the
// server's own OpenAPI document (`tenlyr openapi`), which the server
// generates from its protos: the shapes are written once, in the protos.
// What is written here is the method list of the docs ("All methods"), the
// options, the retries and the error classes.

import type { components, operations } from "./schema.js";

type Schemas = components["schemas"];
/** The JSON body an operation takes. */
type BodyOf<Op extends keyof operations> = operations[Op] extends {
  requestBody: { content: { "application/json": infer B } };
}
  ? B
  : never;

export type Tenant = Schemas["tenlyr.v1.Tenant"];
export type TenantLimits = Schemas["tenlyr.v1.TenantLimits"];
export type CreateTenantResponse = Schemas["tenlyr.v1.CreateTenantResponse"];
export type ListTenantsResponse = Schemas["tenlyr.v1.ListTenantsResponse"];
export type DashboardTenant = Schemas["tenlyr.v1.DashboardTenant"];
export type RotateTenantKeyResponse = Schemas["tenlyr.v1.RotateTenantKeyResponse"];
export type UsageEvent = Schemas["tenlyr.v1.UsageEvent"];
export type TenantUsageMetric = Schemas["tenlyr.v1.TenantUsageMetric"];
export type UsageSummary = Schemas["tenlyr.v1.UsageSummary"];
export type HealthOverview = Schemas["tenlyr.v1.HealthOverview"];
export type TenantHealth = Schemas["tenlyr.v1.TenantHealth"];
export type IsolationMigration = Schemas["tenlyr.v1.IsolationMigration"];
export type Billing = Schemas["tenlyr.v1.TenantBilling"];
export type PortalUrl = Schemas["tenlyr.v1.CreatePortalUrlResponse"];
export type Alert = Schemas["tenlyr.v1.Alert"];
/** Whose alerts: a tenant's key, or (admin key) `{ tenantId }`; none: all. */
export type AlertScope = string | { tenantId?: string };

function alertScope(scope: AlertScope | undefined): [{ tenantId?: string }, string | undefined] {
  return typeof scope === "string" ? [{}, scope] : [scope ?? {}, undefined];
}
export type ResolveAllAlertsResponse = Schemas["tenlyr.v1.ResolveAllAlertsResponse"];
export type ErrorBody = Schemas["Error"];

type CreateTenantInput = BodyOf<"CreateTenant">;
type TrackInput = BodyOf<"Track">;
type CreateAlertInput = BodyOf<"CreateAlert">;
export type Plan = Exclude<Tenant["plan"], "unspecified">;
export type IsolationLevel = Exclude<IsolationMigration["toLevel"], "unspecified" | "shared_schema">;

export const VERSION = "0.1.0";

export { verifySignature, verifyStandardWebhook, type VerifyOptions } from "./webhooks.js";

export interface TenlyrOptions {
  /** An admin key (`tenlyr_live_tf_…`) or a tenant key (`tenlyr_live_…`). */
  apiKey: string;
  /** Default `https://api.tenlyr.app`, or `TENLYR_BASE_URL` when set. */
  baseUrl?: string;
  /** Per-request timeout in ms (default 10 000); a timeout is not retried. */
  timeout?: number;
  /** Retries of 5xx, 429 and network failures (default 3). */
  retries?: number;
  /** First back-off in ms, doubled on each retry (default 200). */
  retryDelay?: number;
  /** A fetch implementation (edge runtimes, tests); default `globalThis.fetch`. */
  fetchFn?: typeof fetch;
}

/** Base class of every error the SDK throws. */
export class TenlyrError extends Error {
  readonly statusCode: number | undefined;
  readonly body: unknown;
  constructor(message: string, statusCode?: number, body?: unknown) {
    super(message);
    this.name = new.target.name;
    this.statusCode = statusCode;
    this.body = body;
  }
}
/** 401: the key is missing, malformed or revoked. */
export class AuthenticationError extends TenlyrError {}
/** 403: a valid key without the scope (a tenant key on an admin route). */
export class PermissionError extends TenlyrError {}
/** 404: no such tenant, migration, alert or resource. */
export class NotFoundError extends TenlyrError {}
/** 409: a duplicate (most often `ownerEmail`). */
export class ConflictError extends TenlyrError {}
/** 400 / 422: the request failed validation; `.body.details` names the fields. */
export class InvalidRequestError extends TenlyrError {}
/** The docs' name for {@link InvalidRequestError} (the same class). */
export const ValidationError = InvalidRequestError;
export type ValidationError = InvalidRequestError;
/** 429: rate limited; `.retryAfter` in seconds. Retried automatically. */
export class RateLimitError extends TenlyrError {
  readonly retryAfter: number | undefined;
  constructor(message: string, statusCode: number, body: unknown, retryAfter?: number) {
    super(message, statusCode, body);
    this.retryAfter = retryAfter;
  }
}
/** The request took longer than `timeout`; never retried. */
export class TenlyrTimeoutError extends TenlyrError {}
/** No response (refused, reset, DNS); retried. */
export class TenlyrNetworkError extends TenlyrError {}
/** 501: the server does not implement this yet. */
export class TenlyrNotImplementedError extends TenlyrError {}

function errorFor(status: number, body: unknown, headers: Headers): TenlyrError {
  const message =
    (body && typeof body === "object" && "message" in body && typeof body.message === "string"
      ? body.message
      : undefined) ??
    (body && typeof body === "object" && "error" in body && typeof body.error === "string"
      ? body.error
      : undefined) ??
    `HTTP ${status}`;
  switch (status) {
    case 400:
    case 422:
      return new InvalidRequestError(message, status, body);
    case 401:
      return new AuthenticationError(message, status, body);
    case 403:
      return new PermissionError(message, status, body);
    case 404:
      return new NotFoundError(message, status, body);
    case 409:
      return new ConflictError(message, status, body);
    case 429: {
      const raw = headers.get("retry-after");
      const seconds = raw === null ? undefined : Number(raw);
      return new RateLimitError(message, status, body, Number.isFinite(seconds) ? seconds : undefined);
    }
    case 501:
      return new TenlyrNotImplementedError(message, status, body);
    default:
      return new TenlyrError(message, status, body);
  }
}

function uuid(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c?.randomUUID) return c.randomUUID();
  return "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx".replace(/[xy]/g, (ch) => {
    const r = (Math.random() * 16) | 0;
    return (ch === "x" ? r : (r & 0x3) | 0x8).toString(16);
  });
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface Call {
  method: "GET" | "POST" | "PUT" | "PATCH" | "DELETE";
  path: string;
  query?: Record<string, string | number | undefined>;
  body?: unknown;
  /** The key for this call (a tenant key for usage calls); default the client's. */
  key?: string;
}

class Transport {
  readonly baseUrl: string;
  readonly timeout: number;
  readonly retries: number;
  readonly retryDelay: number;
  private readonly apiKey: string;
  private readonly fetchFn: typeof fetch;

  constructor(options: TenlyrOptions) {
    if (!options || typeof options.apiKey !== "string" || options.apiKey.length === 0) {
      throw new TenlyrError("apiKey is required");
    }
    const env = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env;
    this.apiKey = options.apiKey;
    this.baseUrl = (options.baseUrl ?? env?.TENLYR_BASE_URL ?? "https://api.tenlyr.app").replace(/\/+$/, "");
    this.timeout = options.timeout ?? 10_000;
    this.retries = options.retries ?? 3;
    this.retryDelay = options.retryDelay ?? 200;
    const f = options.fetchFn ?? globalThis.fetch;
    if (typeof f !== "function") throw new TenlyrError("no fetch available: pass fetchFn");
    this.fetchFn = f.bind(globalThis);
  }

  async request<T>(call: Call): Promise<T> {
    const url = new URL(this.baseUrl + call.path);
    for (const [k, v] of Object.entries(call.query ?? {})) {
      if (v !== undefined) url.searchParams.set(k, String(v));
    }
    const headers: Record<string, string> = {
      authorization: `Bearer ${call.key ?? this.apiKey}`,
      "user-agent": `tenlyr-sdk/${VERSION}`,
      accept: "application/json",
    };
    if (call.body !== undefined) headers["content-type"] = "application/json";
    // One key for every attempt of a call: a retried create is created once.
    if (call.method === "POST" || call.method === "PATCH") headers["idempotency-key"] = uuid();
    const payload = call.body === undefined ? undefined : JSON.stringify(call.body);
    let attempt = 0;
    for (;;) {
      let failure: TenlyrError;
      let wait = this.retryDelay * 2 ** attempt;
      try {
        const response = await this.once(url, call.method, headers, payload);
        const text = await response.text();
        let body: unknown = undefined;
        if (text.length > 0) {
          try {
            body = JSON.parse(text);
          } catch {
            body = text;
          }
        }
        if (response.ok) return body as T;
        failure = errorFor(response.status, body, response.headers);
        const retryable = response.status === 429 || (response.status >= 500 && response.status !== 501);
        if (!retryable) throw failure;
        if (failure instanceof RateLimitError && failure.retryAfter !== undefined) {
          wait = Math.max(wait, failure.retryAfter * 1000);
        }
      } catch (err) {
        if (err instanceof TenlyrTimeoutError) throw err;
        if (err instanceof TenlyrError && !(err instanceof TenlyrNetworkError)) {
          const status = err.statusCode ?? 0;
          if (!(status === 429 || (status >= 500 && status !== 501))) throw err;
          failure = err;
        } else if (err instanceof TenlyrNetworkError) {
          failure = err;
        } else {
          throw err;
        }
      }
      if (attempt >= this.retries) throw failure;
      attempt += 1;
      await sleep(wait);
    }
  }

  private async once(
    url: URL,
    method: string,
    headers: Record<string, string>,
    body: string | undefined,
  ): Promise<Response> {
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, this.timeout);
    try {
      return await Promise.race([
        this.fetchFn(url, { method, headers, body, signal: controller.signal }),
        new Promise<never>((_, reject) =>
          controller.signal.addEventListener("abort", () =>
            reject(new TenlyrTimeoutError(`request timed out after ${this.timeout} ms`)),
          ),
        ),
      ]);
    } catch (err) {
      if (timedOut || err instanceof TenlyrTimeoutError) {
        throw new TenlyrTimeoutError(`request timed out after ${this.timeout} ms`);
      }
      const cause = err instanceof Error ? err.message : String(err);
      throw new TenlyrNetworkError(`network error: ${cause}`);
    } finally {
      clearTimeout(timer);
    }
  }
}

const enc = encodeURIComponent;

export class Tenlyr {
  readonly tenants;
  readonly usage;
  readonly health;
  readonly isolation;
  readonly billing;
  readonly alerts;

  constructor(options: TenlyrOptions) {
    const t = new Transport(options);
    const get = <T>(path: string, query?: Call["query"], key?: string) =>
      t.request<T>({ method: "GET", path, query, key });

    this.tenants = {
      create: (input: CreateTenantInput & { name: string; ownerEmail: string }) =>
        t.request<CreateTenantResponse>({ method: "POST", path: "/api/v1/tenants", body: input }),
      list: (params: { limit?: number; cursor?: string } = {}) =>
        get<ListTenantsResponse>("/api/v1/tenants", params),
      get: (id: string) => get<Tenant>(`/api/v1/tenants/${enc(id)}`),
      // All tenants, every page merged into one array, as the docs say;
      // with `limit` or `cursor`, just that page's rows.
      health: async (params: { limit?: number; cursor?: string } = {}) => {
        type Page = Schemas["tenlyr.v1.ListDashboardTenantsResponse"];
        const path = "/api/v1/tenants/dashboard";
        if (params.limit !== undefined || params.cursor !== undefined) {
          return (await get<Page>(path, params)).data;
        }
        const rows: Page["data"] = [];
        let cursor: string | undefined;
        do {
          const page: Page = await get<Page>(path, { limit: 100, ...(cursor ? { cursor } : {}) });
          rows.push(...page.data);
          cursor = page.nextCursor ?? undefined;
        } while (cursor);
        return rows;
      },
      update: (id: string, patch: { name?: string; region?: string; timeZone?: string }) =>
        t.request<Tenant>({ method: "PATCH", path: `/api/v1/tenants/${enc(id)}`, body: patch }),
      suspend: (id: string, reason?: string) =>
        t.request<Tenant>({ method: "POST", path: `/api/v1/tenants/${enc(id)}/suspend`, body: reason === undefined ? {} : { reason } }),
      reactivate: (id: string) =>
        t.request<Tenant>({ method: "POST", path: `/api/v1/tenants/${enc(id)}/reactivate`, body: {} }),
      terminate: (id: string) =>
        t.request<Tenant>({ method: "POST", path: `/api/v1/tenants/${enc(id)}/terminate`, body: {} }),
      rotateApiKey: (id: string) =>
        t.request<RotateTenantKeyResponse>({ method: "POST", path: `/api/v1/tenants/${enc(id)}/rotate-key`, body: {} }),
      changePlan: (id: string, plan: Plan) =>
        t.request<Tenant>({ method: "PATCH", path: `/api/v1/tenants/${enc(id)}/plan`, body: { plan } }),
      /** The tenant's own limits and those in force. */
      limits: (id: string) => get<TenantLimits>(`/api/v1/tenants/${enc(id)}/limits`),
      /** Sets the tenant's own limits (enterprise's custom ones); a field left out clears it. */
      setLimits: (id: string, limits: { apiCalls?: number | null; storageGb?: number | null; seats?: number | null }) =>
        t.request<TenantLimits>({ method: "PUT", path: `/api/v1/tenants/${enc(id)}/limits`, body: limits }),
      delete: async (id: string): Promise<void> => {
        await t.request<unknown>({ method: "DELETE", path: `/api/v1/tenants/${enc(id)}` });
      },
    };

    this.usage = {
      track: ({ tenantKey, ...event }: { tenantKey: string; metric: NonNullable<TrackInput["metric"]>; value: number } & TrackInput) =>
        t.request<UsageEvent>({ method: "POST", path: "/api/v1/usage/track", body: event, key: tenantKey }),
      metrics: (tenantKey: string) => get<TenantUsageMetric>("/api/v1/usage/metrics", undefined, tenantKey),
      summary: (tenantKey: string, range: { start?: string; end?: string } = {}) =>
        get<UsageSummary>("/api/v1/usage/summary", range, tenantKey),
      events: (tenantKey: string, limit?: number) =>
        get<UsageEvent[]>("/api/v1/usage/events", { limit }, tenantKey),
    };

    this.health = {
      overview: () => get<HealthOverview>("/api/v1/health/overview"),
      list: () => get<TenantHealth[]>("/api/v1/health"),
      get: (tenantId: string) => get<TenantHealth>(`/api/v1/health/${enc(tenantId)}`),
      throttle: (tenantId: string, limitRpm: number) =>
        t.request<TenantHealth>({ method: "POST", path: `/api/v1/health/${enc(tenantId)}/throttle`, body: { limitRpm } }),
      removeThrottle: (tenantId: string) =>
        t.request<TenantHealth>({ method: "DELETE", path: `/api/v1/health/${enc(tenantId)}/throttle` }),
    };

    const getMigration = (id: string) => get<IsolationMigration>(`/api/v1/isolation/migrations/${enc(id)}`);
    this.isolation = {
      migrate: (tenantId: string, { targetLevel }: { targetLevel: IsolationLevel }) =>
        t.request<IsolationMigration>({ method: "POST", path: "/api/v1/isolation/migrate", body: { tenantId, targetLevel } }),
      getMigration,
      /** With an admin key, pass a tenant id as `{ tenantId }`; with a tenant key, its own. */
      migrations: (tenantKey?: string, params: { tenantId?: string } = {}) =>
        get<IsolationMigration[]>("/api/v1/isolation/migrations", params, tenantKey),
      /** Polls until `completed` (returned) or `failed` (thrown); throws TenlyrTimeoutError after `timeoutMs`. */
      waitForMigration: async (
        id: string,
        { pollIntervalMs = 1000, timeoutMs = 300_000 }: { pollIntervalMs?: number; timeoutMs?: number } = {},
      ): Promise<IsolationMigration> => {
        const deadline = Date.now() + timeoutMs;
        for (;;) {
          const migration = await getMigration(id);
          if (migration.status === "completed") return migration;
          if (migration.status === "failed") {
            throw new TenlyrError(`migration ${id} failed: ${migration.error ?? "unknown error"}`, undefined, migration);
          }
          if (Date.now() + pollIntervalMs > deadline) {
            throw new TenlyrTimeoutError(`migration ${id} still ${migration.status} after ${timeoutMs} ms`, undefined, migration);
          }
          await sleep(pollIntervalMs);
        }
      },
    };

    this.billing = {
      get: (tenantKey: string) => get<Billing>("/api/v1/billing", undefined, tenantKey),
      portalUrl: (tenantKey: string, { returnUrl }: { returnUrl?: string } = {}) =>
        t.request<PortalUrl>({ method: "POST", path: "/api/v1/billing/portal", body: returnUrl === undefined ? {} : { returnUrl }, key: tenantKey }),
    };

    this.alerts = {
      // As documented, `key?` is a tenant's key (that tenant's alerts);
      // an admin may pass `{ tenantId }` instead, or nothing for all.
      list: (scope?: AlertScope) => get<Alert[]>("/api/v1/alerts", ...alertScope(scope)),
      unresolved: (scope?: AlertScope) => get<Alert[]>("/api/v1/alerts/unresolved", ...alertScope(scope)),
      create: (input: CreateAlertInput) => t.request<Alert>({ method: "POST", path: "/api/v1/alerts", body: input }),
      resolve: (id: string) => t.request<Alert>({ method: "POST", path: `/api/v1/alerts/${enc(id)}/resolve`, body: {} }),
      resolveAll: (scope?: AlertScope) => {
        const [params, key] = alertScope(scope);
        return t.request<ResolveAllAlertsResponse>({ method: "POST", path: "/api/v1/alerts/resolve-all", body: params, key });
      },
    };
  }
}

export default Tenlyr;
