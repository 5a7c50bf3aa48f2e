// The Tenlyr Backoffice: a client of the public REST API on the same
// origin, signed in with the session cookie. No business rules live here:
// what a user may see and do is what the API answers (DESIGN.md §13).
// Plain ES modules, no build step and no dependencies.

const state = { session: null, cleanup: [] };

// Work a page started (timers) that must stop when the user leaves it.
function onLeave(stop) {
  state.cleanup.push(stop);
}

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(method, path, { body, query } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  }
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.session && state.session.csrfToken) {
    headers["X-CSRF-Token"] = state.session.csrfToken;
  }
  let res;
  try {
    res = await fetch(url, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, { message: `The server could not be reached (${err.message}).` });
  }
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { message: text };
  }
  if (!res.ok) {
    if (res.status === 401 && !path.startsWith("/api/v1/auth/")) {
      state.session = null;
      go("/login", { next: location.hash.slice(1) });
    }
    throw new ApiError(res.status, data);
  }
  return data;
}

// ---------------------------------------------------------------- DOM

function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "value") el.value = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

function errorBox(err) {
  const box = h("div", { class: "error", role: "alert", "data-testid": "error" }, err.message);
  const details = err.body && Array.isArray(err.body.details) ? err.body.details : [];
  const fields = details.flatMap((d) => d.fieldViolations || (d.field ? [d] : []));
  if (fields.length) {
    box.append(h("ul", {}, fields.map((f) => h("li", {}, `${f.field}: ${f.description}`))));
  }
  return box;
}

// A form whose errors are shown inside it, next to what failed.
function form(fields, submit, onSubmit, { inline = false, testid } = {}) {
  const errors = h("div");
  const button = h("button", { type: "submit" }, submit);
  const el = h("form", { class: inline ? "inline" : "", "data-testid": testid }, fields, button, errors);
  el.addEventListener("submit", async (e) => {
    e.preventDefault();
    errors.replaceChildren();
    button.disabled = true;
    try {
      await onSubmit(new FormData(el), el);
    } catch (err) {
      errors.replaceChildren(errorBox(err));
    } finally {
      button.disabled = false;
    }
  });
  return el;
}

function field(label, input) {
  return h("label", {}, label, input);
}

function select(name, options, value) {
  return h(
    "select",
    { name },
    options.map(([v, text]) => h("option", { value: v, selected: v === value }, text)),
  );
}

// A secret shown once, with a copy button.
function shownOnce(title, value, testid) {
  const code = h("code", { "data-testid": testid }, value);
  const copy = h("button", { type: "button", class: "secondary" }, "Copy");
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(value);
      copy.textContent = "Copied";
    } catch {
      const range = document.createRange();
      range.selectNodeContents(code);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      copy.textContent = "Selected: press Ctrl+C";
    }
  });
  return h(
    "div",
    { class: "notice", role: "status" },
    h("strong", {}, title),
    h("div", { class: "muted" }, "Shown this once: copy it now and store it securely."),
    h("div", { class: "secret" }, code, copy),
  );
}

// Links the server makes are paths unless it knows its public URL.
function absolute(url) {
  return new URL(url, location.origin).href;
}

// A button that runs `run` once at a time and shows its error in `errors`.
function actionButton(label, cls, run, errors, testid) {
  const b = h("button", { type: "button", class: cls, "data-testid": testid }, label);
  b.addEventListener("click", async () => {
    b.disabled = true;
    try {
      await run();
    } catch (err) {
      errors.replaceChildren(errorBox(err));
    } finally {
      b.disabled = false;
    }
  });
  return b;
}

function badge(text) {
  return h("span", { class: `badge ${text}` }, String(text).replaceAll("_", " "));
}

function table(headers, rows, empty) {
  if (!rows.length) return h("div", { class: "empty" }, empty);
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c) => h("td", {}, c))))),
  );
}

function stat(label, value, note) {
  return h("div", { class: "stat" }, h("small", {}, label), h("b", {}, value), note ? h("small", {}, note) : null);
}

// Times in the zone of the tenant they belong to (UTC elsewhere).
function time(iso, timeZone) {
  if (!iso) return "—";
  const tz = timeZone || "UTC";
  try {
    return new Intl.DateTimeFormat("en-GB", {
      year: "numeric",
      month: "short",
      day: "2-digit",
      hour: "2-digit",
      minute: "2-digit",
      second: "2-digit",
      timeZone: tz,
      timeZoneName: "short",
    }).format(new Date(iso));
  } catch {
    return iso;
  }
}

function money(cents, currency) {
  return new Intl.NumberFormat("en-US", { style: "currency", currency: (currency || "usd").toUpperCase() }).format(
    Number(cents || 0) / 100,
  );
}

// A "load more" list over the API's cursor.
function pagedList(load, render) {
  const holder = h("div");
  const more = h("button", { type: "button", class: "secondary" }, "Load more");
  let cursor = null;
  let rows = [];
  const page = async () => {
    const res = await load(cursor);
    rows = rows.concat(res.data);
    cursor = res.nextCursor;
    holder.replaceChildren(render(rows), cursor ? more : "");
  };
  more.addEventListener("click", () => page().catch((err) => holder.append(errorBox(err))));
  page().catch((err) => holder.replaceChildren(errorBox(err)));
  return holder;
}

// ---------------------------------------------------------------- routing

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, qs] = raw.split("?");
  return { path, query: Object.fromEntries(new URLSearchParams(qs || "")) };
}

function go(path, query) {
  const qs = query ? `?${new URLSearchParams(query)}` : "";
  const target = `#${path}${qs}`;
  if (location.hash === target) render();
  else location.hash = target;
}

const isPlatform = () => state.session && state.session.user && !state.session.tenant;
const role = () => state.session && state.session.user && state.session.user.role;
const tenantZone = () => (state.session && state.session.tenant && state.session.tenant.timeZone) || "UTC";

const publicRoutes = {
  "/login": loginPage,
  "/accept-invite": (q) => passwordPage(q, "accept-invite"),
  "/reset-password": (q) => passwordPage(q, "reset-password"),
};

const platformRoutes = [
  [/^\/dashboard$/, dashboardPage, "Dashboard"],
  [/^\/tenants$/, tenantsPage, "Tenants"],
  [/^\/tenants\/([0-9a-f-]{36})$/, tenantPage],
  [/^\/users$/, platformUsersPage, "Users"],
  [/^\/audit$/, auditPage, "Audit Logs"],
  [/^\/health$/, healthPage, "Health"],
  [/^\/settings\/webhooks$/, endpointsPage, "Settings → Webhooks"],
  [/^\/settings\/webhooks\/([0-9a-f-]{36})$/, endpointPage],
];

const tenantRoutes = [
  [/^\/home$/, homePage, "Home"],
  [/^\/keys$/, keysPage, "API Keys"],
  [/^\/webhooks$/, webhooksPage, "Webhooks"],
  [/^\/webhooks\/events$/, eventsPage, "Events"],
  [/^\/webhooks\/events\/([A-Za-z0-9_-]{1,64})$/, eventPage],
  [/^\/team$/, teamPage, "Team", "owner"],
  [/^\/audit$/, auditPage, "Audit Logs", "owner"],
];

async function render() {
  for (const stop of state.cleanup.splice(0)) stop();
  const main = document.getElementById("main");
  const { path, query } = parseHash();
  if (publicRoutes[path]) {
    header();
    main.replaceChildren(await publicRoutes[path](query));
    return;
  }
  if (!state.session) {
    try {
      state.session = await api("GET", "/api/v1/auth/session");
    } catch {
      go("/login", path !== "/" ? { next: location.hash.slice(1) } : undefined);
      return;
    }
  }
  const routes = isPlatform() ? platformRoutes : tenantRoutes;
  header(routes, path);
  if (path === "/") {
    go(isPlatform() ? "/dashboard" : "/home");
    return;
  }
  for (const [pattern, page, , needs] of routes) {
    const m = path.match(pattern);
    if (m && (!needs || role() === needs)) {
      main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
      try {
        main.replaceChildren(await page(query, ...m.slice(1)));
      } catch (err) {
        main.replaceChildren(err.status === 404 ? notFound() : errorBox(err));
      }
      main.focus();
      return;
    }
  }
  main.replaceChildren(notFound());
}

function notFound() {
  return h(
    "div",
    { class: "card", "data-testid": "not-found" },
    h("h1", {}, "Not found"),
    h("p", {}, "There is nothing here, or it is not yours to see."),
    h("a", { href: "#/" }, "Back to the start"),
  );
}

function header(routes, path) {
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  if (!routes || !state.session) {
    nav.replaceChildren();
    who.replaceChildren();
    return;
  }
  nav.replaceChildren(
    ...routes
      .filter(([, , label, needs]) => label && (!needs || role() === needs))
      .map(([pattern, , label]) => {
        const href = pattern.source.replace(/^\^/, "").replace(/\$$/, "").replaceAll("\\/", "/");
        return h("a", { href: `#${href}`, class: path && path === href ? "active" : "" }, label);
      }),
  );
  const s = state.session;
  const logout = h("button", { type: "button", class: "secondary" }, "Sign out");
  logout.addEventListener("click", async () => {
    await api("POST", "/api/v1/auth/logout", { body: {} }).catch(() => {});
    state.session = null;
    go("/login");
  });
  who.replaceChildren(
    h("span", { "data-testid": "whoami" }, s.user ? `${s.user.email} · ${s.user.role.replace("_", " ")}` : "API key"),
    s.tenant ? h("span", {}, `· ${s.tenant.name}`) : "",
    logout,
  );
}

window.addEventListener("hashchange", render);
window.addEventListener("DOMContentLoaded", render);

// ---------------------------------------------------------------- sign-in

function signedIn(session, next) {
  state.session = session;
  go(next && next.startsWith("/") && !next.startsWith("/login") ? next.split("?")[0] : "/");
}

function loginPage(query) {
  return h(
    "div",
    { class: "login card" },
    h("h1", {}, "Sign in"),
    form(
      [
        field("Email", h("input", { name: "email", type: "email", autocomplete: "username", required: true })),
        field(
          "Password",
          h("input", { name: "password", type: "password", autocomplete: "current-password", required: true }),
        ),
      ],
      "Sign in",
      async (data) => {
        const session = await api("POST", "/api/v1/auth/login", {
          body: { email: data.get("email"), password: data.get("password") },
        });
        signedIn(session, query.next);
      },
      { testid: "login" },
    ),
  );
}

function passwordPage(query, kind) {
  const title = kind === "accept-invite" ? "Accept your invite" : "Choose a new password";
  // The token leaves the address bar (and the history) once read.
  if (query.token) history.replaceState(null, "", `#/${kind}`);
  if (!query.token) {
    return h("div", { class: "login card" }, h("h1", {}, title), errorBox(new Error("This link has no token.")));
  }
  return h(
    "div",
    { class: "login card" },
    h("h1", {}, title),
    h("p", { class: "muted" }, "At least 12 characters."),
    form(
      [
        field("New password", h("input", { name: "password", type: "password", autocomplete: "new-password", required: true })),
        field("Repeat it", h("input", { name: "again", type: "password", autocomplete: "new-password", required: true })),
      ],
      "Set password and sign in",
      async (data) => {
        if (data.get("password") !== data.get("again")) throw new Error("The two passwords differ.");
        const session = await api("POST", `/api/v1/auth/${kind}`, {
          body: { token: query.token, password: data.get("password") },
        });
        signedIn(session);
      },
      { testid: "set-password" },
    ),
  );
}

// ---------------------------------------------------------------- platform

const PLANS = [
  ["starter", "Starter"],
  ["growth", "Growth"],
  ["scale", "Scale"],
  ["enterprise", "Enterprise"],
];

function zoneInput() {
  const zones = Intl.supportedValuesOf ? Intl.supportedValuesOf("timeZone") : ["UTC"];
  return [
    h("input", { name: "timeZone", list: "zones", value: "UTC", required: true }),
    h("datalist", { id: "zones" }, zones.map((z) => h("option", { value: z }))),
  ];
}

function tenantsPage() {
  const created = h("div");
  const list = () =>
    pagedList(
      (cursor) => api("GET", "/api/v1/tenants", { query: { limit: 50, cursor } }),
      (rows) =>
        table(
          ["Name", "Slug", "Plan", "Status", "Time zone", "Created"],
          rows.map((t) => [
            h("a", { href: `#/tenants/${t.id}` }, t.name),
            t.slug,
            t.plan,
            badge(t.status),
            t.timeZone,
            time(t.createdAt, t.timeZone),
          ]),
          "No tenants yet. Create the first one above.",
        ),
    );
  const holder = h("div", {}, list());
  return h(
    "div",
    {},
    h("h1", {}, "Tenants"),
    h(
      "div",
      { class: "card" },
      h("h2", {}, "New tenant"),
      form(
        [
          field("Name", h("input", { name: "name", required: true })),
          field("Slug", h("input", { name: "slug", pattern: "[a-z0-9][a-z0-9-]*", placeholder: "acme-corp" })),
          field("Owner email", h("input", { name: "ownerEmail", type: "email", required: true })),
          field("Plan", select("plan", PLANS, "starter")),
          field("Business time zone", zoneInput()),
        ],
        "Create tenant",
        async (data, el) => {
          const res = await api("POST", "/api/v1/tenants", {
            body: {
              name: data.get("name"),
              slug: data.get("slug") || undefined,
              ownerEmail: data.get("ownerEmail"),
              plan: data.get("plan"),
              timeZone: data.get("timeZone"),
            },
          });
          el.reset();
          created.replaceChildren(
            shownOnce(`Primary API key of ${res.tenant.name}`, res.apiKey, "new-tenant-key"),
            h("a", { href: `#/tenants/${res.tenant.id}` }, `Open ${res.tenant.name} →`),
          );
          holder.replaceChildren(list());
        },
        { inline: true, testid: "create-tenant" },
      ),
      created,
    ),
    holder,
  );
}

async function tenantPage(_query, id) {
  const tenant = await api("GET", `/api/v1/tenants/${id}`);
  const tz = tenant.timeZone;
  const [billing, health, usage, limits] = await Promise.all([
    api("GET", `/api/v1/billing/tenants/${id}`).catch((e) => e),
    api("GET", `/api/v1/health/${id}`).catch((e) => e),
    api("GET", "/api/v1/usage/metrics", { query: { tenantId: id } }).catch((e) => e),
    api("GET", `/api/v1/tenants/${id}/limits`).catch((e) => e),
  ]);
  return h(
    "div",
    {},
    h("h1", {}, tenant.name, " ", badge(tenant.status)),
    h(
      "div",
      { class: "grid" },
      stat("Plan", tenant.plan),
      stat("Slug", tenant.slug),
      stat("Time zone", tz),
      stat("Isolation", tenant.isolationLevel.replaceAll("_", " ")),
      billing instanceof Error
        ? stat("Billing", "unavailable", billing.message)
        : stat("Billing", billing.status, `MRR ${money(billing.mrrCents, billing.currency)}`),
      health instanceof Error
        ? stat("Health", "unavailable", health.message)
        : stat("Health", health.status, `${health.errorRate.toFixed(2)} % errors`),
      usage instanceof Error
        ? stat("API calls", "unavailable", usage.message)
        : stat("API calls this period", usage.apiCalls, usage.apiCallLimit ? `of ${usage.apiCallLimit}` : "no limit"),
    ),
    h("h2", {}, "Plan and limits"),
    limits instanceof Error ? errorBox(limits) : planSection(tenant, limits),
    h("h2", {}, "Users"),
    usersSection(id, tz, ["owner", "developer", "viewer"]),
    h("h2", {}, "API keys"),
    keysSection(id, tz),
    h("p", {}, h("a", { href: `#/audit?tenantId=${id}` }, "Audit log of this tenant →")),
  );
}

// The tenant's plan and its own limits (enterprise's custom ones; on
// another plan they override the plan's). An empty limit is the plan's.
function planSection(tenant, limits) {
  const shown = h("div");
  const own = (name, label, value) =>
    field(label, h("input", { name, type: "number", min: 0, step: 1, value: value ?? "", placeholder: "the plan's" }));
  const or = (v, set, unset) => (v === null || v === undefined ? unset : `${v} ${set}`);
  const inForce = (l) =>
    `In force each period: ${or(l.apiCallLimit, "API calls", "unlimited API calls")}, ` +
    `${or(l.storageGbLimit, "GB of storage", "unlimited storage")}, ${or(l.seatsLimit, "seats", "unlimited seats")}.`;
  const current = h("p", { class: "muted", "data-testid": "limits-in-force" }, inForce(limits));
  const fields = [
    field("Plan", select("plan", PLANS, tenant.plan)),
    own("apiCalls", "Own API call limit", limits.ownApiCalls),
    own("storageGb", "Own storage limit (GB)", limits.ownStorageGb),
    own("seats", "Own seat limit", limits.ownSeats),
    current,
  ];
  const save = async (data) => {
    if (data.get("plan") !== tenant.plan) {
      tenant.plan = (await api("PATCH", `/api/v1/tenants/${tenant.id}/plan`, { body: { plan: data.get("plan") } })).plan;
    }
    const num = (k) => (data.get(k) === "" ? null : Number(data.get(k)));
    const wanted = { apiCalls: num("apiCalls"), storageGb: num("storageGb"), seats: num("seats") };
    const had = { apiCalls: limits.ownApiCalls, storageGb: limits.ownStorageGb, seats: limits.ownSeats };
    // Only a changed limit is written (a plan change alone leaves them).
    const changed = Object.keys(wanted).some((k) => wanted[k] !== (had[k] === null ? null : Number(had[k])));
    const saved = changed
      ? await api("PUT", `/api/v1/tenants/${tenant.id}/limits`, { body: wanted })
      : await api("GET", `/api/v1/tenants/${tenant.id}/limits`);
    limits = saved;
    current.textContent = inForce(saved);
    shown.replaceChildren(h("div", { class: "notice", role: "status", "data-testid": "limits-saved" }, `Plan ${saved.plan} and limits saved.`));
  };
  return h("div", { class: "card" }, form(fields, "Save plan and limits", save, { testid: "plan-limits" }), shown);
}

function usersSection(tenantId, tz, roles) {
  const shown = h("div");
  const load = (cursor) =>
    api("GET", "/api/v1/users", { query: { tenantId, platformOnly: tenantId ? undefined : true, limit: 50, cursor } });
  const me = state.session.user && state.session.user.id;
  const act = (label, cls, run) => actionButton(label, cls, run, shown);
  const list = () =>
    pagedList(load, (rows) =>
      table(
        ["Email", "Role", "Status", "Last sign-in", ""],
        rows.map((u) => [
            u.email,
            u.role.replace("_", " "),
            badge(u.status),
            time(u.lastLoginAt, tz),
            u.id === me
              ? h("span", { class: "muted" }, "you")
              : h(
                  "span",
                  {},
                  act(u.status === "invited" ? "New invite link" : "Reset link", "secondary", async () => {
                    const link = await api("POST", `/api/v1/users/${u.id}/password-reset`, { body: {} });
                    shown.replaceChildren(shownOnce(`${link.kind} link for ${u.email}`, absolute(link.url), "user-link"));
                  }),
                  " ",
                  act(u.status === "deactivated" ? "Reactivate" : "Deactivate", "secondary", async () => {
                    await api("PATCH", `/api/v1/users/${u.id}`, { body: { active: u.status === "deactivated" } });
                    holder.replaceChildren(list());
                  }),
                  " ",
                  act("Delete", "danger", async () => {
                    if (!confirm(`Delete ${u.email}?`)) return;
                    await api("DELETE", `/api/v1/users/${u.id}`);
                    holder.replaceChildren(list());
                  }),
                ),
          ]),
        tenantId ? "No users yet. Add the first one: they sign in with the invite link." : "No platform users.",
      ),
    );
  const holder = h("div", {}, list());
  return h(
    "div",
    { class: "card" },
    form(
      [
        field("Email", h("input", { name: "email", type: "email", required: true })),
        field(
          "Role",
          select(
            "role",
            roles.map((r) => [r, r.replace("_", " ")]),
            roles[0],
          ),
        ),
      ],
      "Add user",
      async (data, el) => {
        const res = await api("POST", "/api/v1/users", {
          body: { email: data.get("email"), role: data.get("role"), tenantId: tenantId || undefined },
        });
        el.reset();
        shown.replaceChildren(
          shownOnce(
            `Invite link for ${res.user.email} (valid until ${time(res.inviteExpiresAt, tz)})`,
            absolute(res.inviteUrl),
            "invite-link",
          ),
        );
        holder.replaceChildren(list());
      },
      { inline: true, testid: "add-user" },
    ),
    shown,
    holder,
  );
}

function keysSection(tenantId, tz) {
  const shown = h("div");
  const canWrite = isPlatform() || role() !== "viewer";
  const list = async () => {
    const res = await api("GET", `/api/v1/tenants/${tenantId}/api-keys`);
    return table(
      ["Label", "Prefix", "Created", "Last used", "Status", ""],
      res.data.map((k) => {
        const revoke = h("button", { type: "button", class: "danger" }, "Revoke");
        revoke.addEventListener("click", async () => {
          if (!confirm(`Revoke "${k.label}"? Programs using it stop working at once.`)) return;
          try {
            await api("DELETE", `/api/v1/tenants/${tenantId}/api-keys/${k.id}`);
            holder.replaceChildren(await list());
          } catch (err) {
            shown.replaceChildren(errorBox(err));
          }
        });
        return [
          k.label + (k.primary ? " (primary)" : ""),
          h("code", {}, k.prefix + "…"),
          time(k.createdAt, tz),
          time(k.lastUsedAt, tz),
          k.revokedAt ? badge("revoked") : badge("active"),
          !k.revokedAt && canWrite ? revoke : "",
        ];
      }),
      "No keys yet.",
    );
  };
  const holder = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  list()
    .then((t) => holder.replaceChildren(t))
    .catch((err) => holder.replaceChildren(errorBox(err)));
  return h(
    "div",
    { class: "card" },
    canWrite
      ? form(
          [field("Label", h("input", { name: "label", required: true, placeholder: "production, staging, integration-test" }))],
          "Create key",
          async (data, el) => {
            const res = await api("POST", `/api/v1/tenants/${tenantId}/api-keys`, { body: { label: data.get("label") } });
            el.reset();
            shown.replaceChildren(shownOnce(`API key "${res.key.label}"`, res.apiKey, "new-key"));
            holder.replaceChildren(await list());
          },
          { inline: true, testid: "create-key" },
        )
      : h("p", { class: "muted" }, "Viewers can see keys but not create or revoke them."),
    shown,
    holder,
  );
}

function platformUsersPage() {
  const superAdmin = role() === "super_admin";
  return h(
    "div",
    {},
    h("h1", {}, "Platform users"),
    superAdmin
      ? usersSection(undefined, "UTC", ["admin", "super_admin"])
      : h("div", { class: "card" }, h("p", { class: "muted" }, "Only a super admin manages platform users."), usersList()),
    h("p", { class: "muted" }, "Tenant users are managed on each tenant's page."),
  );
}

function usersList() {
  return pagedList(
    (cursor) => api("GET", "/api/v1/users", { query: { platformOnly: true, limit: 50, cursor } }),
    (rows) =>
      table(
        ["Email", "Role", "Status"],
        rows.map((u) => [u.email, u.role, badge(u.status)]),
        "No platform users.",
      ),
  );
}

function auditPage(query) {
  const tz = isPlatform() ? "UTC" : tenantZone();
  const results = h("div");
  const load = (filters) =>
    results.replaceChildren(
      pagedList(
        (cursor) => api("GET", "/api/v1/audit-logs", { query: { ...filters, limit: 50, cursor } }),
        (rows) =>
          table(
            ["When", "Actor", "Action", "Tenant", "Details"],
            rows.map((e) => [
              time(e.occurredAt, tz),
              `${e.actorKind}${e.actorUserId ? " (user)" : e.actorKeyId ? " (key)" : ""}`,
              h("code", {}, e.action),
              e.tenantId ? (isPlatform() ? h("a", { href: `#/tenants/${e.tenantId}` }, e.tenantId.slice(0, 8)) : "yours") : "—",
              h("code", { class: "muted" }, JSON.stringify(e.details || {})),
            ]),
            "Nothing recorded for these filters.",
          ),
      ),
    );
  const filters = { tenantId: query.tenantId, action: query.action };
  load(filters);
  return h(
    "div",
    {},
    h("h1", {}, "Audit log"),
    h(
      "div",
      { class: "card" },
      form(
        [
          isPlatform() ? field("Tenant id", h("input", { name: "tenantId", value: query.tenantId || "" })) : "",
          field("Action", h("input", { name: "action", value: query.action || "", placeholder: "key.create or webhook_settings.*" })),
        ],
        "Filter",
        async (data) => load({ tenantId: data.get("tenantId") || undefined, action: data.get("action") || undefined }),
        { inline: true },
      ),
    ),
    results,
  );
}

async function healthPage() {
  const [overview, alerts] = await Promise.all([
    api("GET", "/api/v1/health/overview"),
    api("GET", "/api/v1/alerts/unresolved"),
  ]);
  const alertRows = (list) =>
    table(
      ["Raised", "Tenant", "Severity", "Message", ""],
      list.map((a) => {
        const resolve = h("button", { type: "button", class: "secondary" }, "Resolve");
        resolve.addEventListener("click", async () => {
          await api("POST", `/api/v1/alerts/${a.id}/resolve`, { body: {} });
          go("/health");
        });
        return [time(a.createdAt), h("a", { href: `#/tenants/${a.tenantId}` }, a.tenantId.slice(0, 8)), badge(a.severity), a.message, resolve];
      }),
      "No open alerts.",
    );
  return h(
    "div",
    {},
    h("h1", {}, "Health"),
    h(
      "div",
      { class: "grid" },
      stat("Tenants", overview.total),
      stat("Healthy", overview.healthy),
      stat("Warning", overview.warning),
      stat("Critical", overview.critical),
      stat("Unknown", overview.unknown),
      stat("Average error rate", `${overview.avgErrorRate.toFixed(2)} %`),
    ),
    h("h2", {}, "Open alerts"),
    alertRows(alerts),
  );
}

// ---------------------------------------------------------------- tenant users

async function homePage() {
  const t = state.session.tenant;
  const [billing, usage] = await Promise.all([
    api("GET", "/api/v1/billing").catch((e) => e),
    api("GET", "/api/v1/usage/metrics").catch((e) => e),
  ]);
  const refresh = h("button", { type: "button", class: "secondary" }, "Refresh");
  refresh.addEventListener("click", () => go("/home", { at: Date.now() }));
  return h(
    "div",
    {},
    h("h1", {}, t.name, " ", badge(t.status)),
    h(
      "div",
      { class: "grid", "data-testid": "tenant-home" },
      stat("Plan", t.plan),
      stat("Slug", t.slug),
      stat("Time zone", t.timeZone),
      billing instanceof Error
        ? stat("Billing", "unavailable", billing.message)
        : stat("Billing status", billing.status, `MRR ${money(billing.mrrCents, billing.currency)}`),
      usage instanceof Error
        ? stat("API calls", "unavailable", usage.message)
        : h(
            "div",
            { class: "stat", "data-testid": "usage-api-calls" },
            h("small", {}, "API calls this period"),
            h("b", {}, usage.apiCalls),
            h("small", {}, usage.apiCallLimit ? `of ${usage.apiCallLimit}` : "no limit"),
          ),
      usage instanceof Error ? "" : stat("Seats", usage.seats, usage.seatsLimit ? `of ${usage.seatsLimit}` : ""),
      usage instanceof Error ? "" : stat("Storage (GB)", usage.storageGb, usage.storageGbLimit ? `of ${usage.storageGbLimit}` : ""),
    ),
    h("p", {}, refresh),
    h(
      "div",
      { class: "card" },
      h("h2", {}, "First steps"),
      h(
        "ol",
        {},
        h("li", {}, h("a", { href: "#/keys" }, "Create a labeled API key"), " per environment and store it securely."),
        h("li", {}, "Run a first ", h("code", {}, "/v1/record"), " flow: lock → save → get."),
        h("li", {}, h("a", { href: "#/webhooks" }, "Set your callback URL and provider secret"), ", then send one test webhook."),
        h("li", {}, "Check it in ", h("a", { href: "#/webhooks/events" }, "Webhooks → Events"), "."),
      ),
    ),
  );
}

function keysPage() {
  return h("div", {}, h("h1", {}, "API keys"), keysSection(state.session.tenant.id, tenantZone()));
}

function teamPage() {
  return h("div", {}, h("h1", {}, "Team"), usersSection(state.session.tenant.id, tenantZone(), ["developer", "viewer", "owner"]));
}

const PROVIDERS = ["stripe", "generic", "shopify", "github", "paypal", "braintree"];

async function webhooksPage() {
  const settings = await api("GET", "/api/v1/webhooks/settings");
  const canWrite = role() !== "viewer";
  const shown = h("div");
  const byProvider = Object.fromEntries(settings.providers.map((p) => [p.provider, p]));
  const copyUrl = (url) => {
    const b = h("button", { type: "button", class: "secondary" }, "Copy");
    b.addEventListener("click", () => navigator.clipboard.writeText(url).then(() => (b.textContent = "Copied")).catch(() => {}));
    return b;
  };
  const rows = PROVIDERS.map((name) => {
    const p = byProvider[name] || { enabled: false, secretConfigured: false, inboundUrl: "" };
    return [
      h("strong", {}, name),
      h("input", { type: "checkbox", name: `enabled-${name}`, checked: p.enabled, disabled: !canWrite, "aria-label": `${name} enabled` }),
      h("input", {
        type: "password",
        name: `secret-${name}`,
        autocomplete: "off",
        disabled: !canWrite,
        "aria-label": `${name} secret`,
        placeholder: p.secretConfigured ? "configured: leave empty to keep" : name === "braintree" ? "public_key:private_key" : "signing secret",
      }),
      name === "paypal"
        ? h("input", { name: "paypalWebhookId", value: p.paypalWebhookId || "", placeholder: "PayPal webhook id", disabled: !canWrite })
        : "",
      p.inboundUrl
        ? h("span", {}, h("code", { "data-testid": `inbound-${name}` }, absolute(p.inboundUrl)), " ", copyUrl(absolute(p.inboundUrl)))
        : "",
    ];
  });
  const fields = [
    field(
      "Callback URL (where verified events are forwarded)",
      h("input", { name: "callbackUrl", type: "url", value: settings.callbackUrl || "", placeholder: "https://example.com/hooks/tenlyr", disabled: !canWrite }),
    ),
    settings.callbackDisabledReason ? errorBox(new Error(`Forwarding is paused: ${settings.callbackDisabledReason}`)) : "",
    h("p", { class: "muted" }, `Signing secret for forwarded events: ${settings.signingSecretConfigured ? "configured" : "created when you save a callback URL"}.`),
    table(["Provider", "Enabled", "Secret", "", "Inbound URL (give this to the provider)"], rows, ""),
  ];
  const save = async (data) => {
    const providers = PROVIDERS.map((name) => {
      const p = { provider: name, enabled: data.get(`enabled-${name}`) === "on" };
      const secret = data.get(`secret-${name}`);
      if (secret) p.secret = secret;
      if (name === "paypal" && data.get("paypalWebhookId")) p.paypalWebhookId = data.get("paypalWebhookId");
      return p;
    }).filter((p) => p.enabled || byProvider[p.provider]?.enabled || p.secret);
    const res = await api("PUT", "/api/v1/webhooks/settings", {
      body: { callbackUrl: data.get("callbackUrl") || "", providers },
    });
    const out = [h("div", { class: "notice", role: "status", "data-testid": "settings-saved" }, "Webhook settings saved.")];
    if (res.signingSecret) out.push(shownOnce("Signing secret for forwarded events", res.signingSecret, "signing-secret"));
    shown.replaceChildren(...out);
  };
  return h(
    "div",
    {},
    h("h1", {}, "Webhooks"),
    h("p", {}, h("a", { href: "#/webhooks/events" }, "Events →")),
    h("div", { class: "card" }, canWrite ? form(fields, "Save settings", save, { testid: "webhook-settings" }) : h("div", {}, fields)),
    shown,
  );
}

function eventsPage(query) {
  const tz = tenantZone();
  const list = pagedList(
    (cursor) => api("GET", "/api/v1/webhooks/events", { query: { status: query.status, limit: 50, cursor } }),
    (rows) =>
      table(
        ["Received", "Provider", "Type", "Status", "Attempts", "Last error"],
        rows.map((e) => [
          h("a", { href: `#/webhooks/events/${e.id}` }, time(e.receivedAt, tz)),
          e.provider,
          h("span", {}, e.type, h("br"), h("small", { class: "muted" }, e.providerRawType)),
          badge(e.status),
          e.attempts,
          e.lastError || "",
        ]),
        "No webhook events yet. Send one to an inbound URL from the Webhooks page.",
      ),
  );
  return h(
    "div",
    { "data-testid": "events" },
    h("h1", {}, "Webhook events"),
    h(
      "p",
      {},
      ["", "received", "queued", "processed", "delivery_failed"].map((s) => [
        h("a", { href: `#/webhooks/events${s ? `?status=${s}` : ""}`, class: query.status === s ? "active" : "" }, s ? s.replace("_", " ") : "all"),
        " ",
      ]),
    ),
    list,
  );
}

async function eventPage(_query, id) {
  const e = await api("GET", `/api/v1/webhooks/events/${id}`);
  const tz = tenantZone();
  const shown = h("div");
  const retry = h("button", { type: "button" }, "Retry forwarding");
  retry.addEventListener("click", async () => {
    try {
      await api("POST", `/api/v1/webhooks/events/${id}/retry`, { body: {} });
      go(`/webhooks/events/${id}`, { at: Date.now() });
    } catch (err) {
      shown.replaceChildren(errorBox(err));
    }
  });
  return h(
    "div",
    {},
    h("h1", {}, e.type, " ", badge(e.status)),
    h(
      "div",
      { class: "grid" },
      stat("Provider", e.provider),
      stat("Raw type", e.providerRawType),
      stat("Provider event id", e.providerEventId),
      stat("Attempts", e.attempts),
      stat("Received", time(e.receivedAt, tz)),
      stat("Processed", time(e.processedAt, tz)),
    ),
    e.lastError ? errorBox(new Error(e.lastError)) : "",
    role() !== "viewer" ? h("p", {}, retry) : "",
    shown,
    h("h2", {}, "Attempts"),
    table(
      ["When", "Result", "HTTP status", "Latency", "Error or response"],
      (e.attemptLog || []).map((a) => [
        time(a.attemptedAt, tz),
        a.ok ? badge("ok") : badge("bad"),
        a.responseStatus ?? "no response",
        `${a.latencyMs} ms`,
        a.error || a.responseExcerpt || "",
      ]),
      "Not forwarded yet.",
    ),
    h("h2", {}, "Payload"),
    h("pre", {}, JSON.stringify(e.payload, null, 2)),
  );
}

// ---------------------------------------------------------------- dashboard

const DASHBOARD_COLUMNS = [
  ["name", "Tenant", (t) => h("a", { href: `#/tenants/${t.id}` }, t.name)],
  ["plan", "Plan", (t) => t.plan],
  ["healthStatus", "Health", (t) => badge(t.healthStatus)],
  ["apiCalls", "API calls", (t) => usageOf(t.apiCalls, t.apiCallLimit)],
  ["storageGb", "Storage (GB)", (t) => usageOf(t.storageGb, t.storageGbLimit)],
  ["seats", "Seats", (t) => usageOf(t.seats, t.seatsLimit)],
  ["errorRate", "Error rate", (t) => `${t.errorRate.toFixed(2)} %`],
  ["requestRate", "Requests/min", (t) => t.requestRate.toFixed(1)],
  ["slaRisk", "SLA risk", (t) => (t.slaRisk ? badge("at_risk") : "no")],
  ["rateLimit", "Rate limit", (t) => (t.rateLimit ? `${t.rateLimit}/min` : "—")],
  ["mrrCents", "MRR", (t) => money(t.mrrCents)],
  ["usageCostCents", "Usage cost", (t) => money(t.usageCostCents)],
];

function usageOf(value, limit) {
  return limit ? `${value} / ${limit}` : `${value}`;
}

function sortValue(row, key) {
  const v = row[key];
  if (typeof v === "boolean") return v ? 1 : 0;
  if (typeof v === "number") return v;
  if (v !== null && v !== "" && !Number.isNaN(Number(v)) && key !== "name") return Number(v);
  return String(v ?? "").toLowerCase();
}

// The tenants table with the documented dashboard fields, refreshed every
// 30 s (the Quickstart's promise; `?refresh=N` seconds for tests) in place:
// the same pages are reloaded, the sort and the scroll position stay.
function dashboardPage(query) {
  const every = Math.max(1, Number(query.refresh) || 30) * 1000;
  const view = { pages: 1, sort: "name", desc: false, rows: [], next: null, at: null };
  const overview = h("div", { class: "grid", "data-testid": "overview" });
  const body = h("tbody");
  const head = h("tr");
  const footer = h("div");
  const status = h("p", { class: "muted", "data-testid": "refreshed" });
  const more = h("button", { type: "button", class: "secondary" }, "Load more");
  const errors = h("div");

  const draw = () => {
    head.replaceChildren(
      ...DASHBOARD_COLUMNS.map(([key, label]) => {
        const arrow = view.sort === key ? (view.desc ? " ▼" : " ▲") : "";
        const th = h("th", { role: "columnheader", "aria-sort": view.sort === key ? (view.desc ? "descending" : "ascending") : "none" });
        const b = h("button", { type: "button", class: "link" }, label + arrow);
        b.addEventListener("click", () => {
          view.desc = view.sort === key ? !view.desc : false;
          view.sort = key;
          draw();
        });
        th.append(b);
        return th;
      }),
    );
    const sorted = [...view.rows].sort((a, b) => {
      const x = sortValue(a, view.sort);
      const y = sortValue(b, view.sort);
      return (x < y ? -1 : x > y ? 1 : 0) * (view.desc ? -1 : 1);
    });
    body.replaceChildren(
      ...(sorted.length
        ? sorted.map((t) => h("tr", { "data-tenant": t.id }, DASHBOARD_COLUMNS.map(([, , cell]) => h("td", {}, cell(t)))))
        : [h("tr", {}, h("td", { colspan: DASHBOARD_COLUMNS.length, class: "empty" }, "No tenants yet: create one under Tenants."))]),
    );
    footer.replaceChildren(view.next ? more : "");
    status.textContent = view.at ? `Updated ${time(view.at)} · refreshes every ${every / 1000} s` : "";
  };

  // Loads the first `pages` pages again (a refresh keeps the user's depth).
  const load = async () => {
    try {
      const [ov, rows] = await Promise.all([
        api("GET", "/api/v1/health/overview"),
        (async () => {
          let cursor;
          let all = [];
          let next = null;
          for (let i = 0; i < view.pages; i++) {
            const page = await api("GET", "/api/v1/tenants/dashboard", { query: { limit: 50, cursor } });
            all = all.concat(page.data);
            next = page.nextCursor;
            if (!next) break;
            cursor = next;
          }
          return { all, next };
        })(),
      ]);
      overview.replaceChildren(
        stat("Tenants", ov.total),
        stat("Healthy", ov.healthy),
        stat("Warning", ov.warning),
        stat("Critical", ov.critical),
        stat("Unknown", ov.unknown),
        stat("Average error rate", `${ov.avgErrorRate.toFixed(2)} %`),
      );
      view.rows = rows.all;
      view.next = rows.next;
      view.at = new Date().toISOString();
      errors.replaceChildren();
      draw();
    } catch (err) {
      errors.replaceChildren(errorBox(err));
    }
  };
  more.addEventListener("click", () => {
    view.pages += 1;
    load();
  });
  load();
  const timer = setInterval(load, every);
  onLeave(() => clearInterval(timer));
  return h(
    "div",
    {},
    h("h1", {}, "Dashboard"),
    overview,
    errors,
    h("div", { class: "scroll" }, h("table", { "data-testid": "dashboard" }, h("thead", {}, head), body)),
    footer,
    status,
  );
}

// ---------------------------------------------------------------- platform webhooks

// How to check what Tenlyr sends, in Node (the browser test runs this very
// text against a real delivery).
function snippet() {
  return `// Tenlyr-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>
import { createHmac, timingSafeEqual } from "node:crypto";
export function verifyTenlyr(rawBody, header, secret) {
  const t = header.split(",").find((p) => p.startsWith("t="))?.slice(2);
  const signatures = header.split(",").filter((p) => p.startsWith("v1=")).map((p) => p.slice(3));
  if (!t || Math.abs(Date.now() / 1000 - Number(t)) > 300) return false;
  const expected = createHmac("sha256", secret).update(\`\${t}.\${rawBody}\`).digest();
  return signatures.some((s) => {
    const got = Buffer.from(s, "hex");
    return got.length === expected.length && timingSafeEqual(got, expected);
  });
}

// Standard Webhooks (webhook-id, webhook-timestamp, webhook-signature):
// the official library (npm install standardwebhooks) throws if invalid.
import { Webhook } from "standardwebhooks";
export function verifyStandard(rawBody, headers, secret) {
  return new Webhook(secret).verify(rawBody, headers);
}`;
}

async function endpointsPage() {
  const shown = h("div");
  const holder = h("div");
  const list = async () => {
    const res = await api("GET", "/api/v1/webhook-endpoints");
    holder.replaceChildren(
      table(
        ["URL", "Events", "Status", "Breaker", "Description", ""],
        res.data.map((e) => [
          h("a", { href: `#/settings/webhooks/${e.id}` }, e.url),
          (e.eventTypes.length ? e.eventTypes : ["every event"]).join(", "),
          e.enabled ? badge("enabled") : h("span", {}, badge("disabled"), e.disabledReason ? h("small", { class: "muted" }, ` ${e.disabledReason}`) : ""),
          badge(e.breakerState === "closed" ? "closed" : e.breakerState),
          e.description,
          h("a", { href: `#/settings/webhooks/${e.id}` }, "Deliveries →"),
        ]),
        "No endpoints yet. Add one to receive platform events (tenant.created, health.*, …).",
      ),
    );
  };
  await list();
  return h(
    "div",
    {},
    h("h1", {}, "Settings → Webhooks"),
    h("p", { class: "muted" }, "Platform events go to these endpoints, signed with Tenlyr-Signature and Standard Webhooks headers."),
    h(
      "div",
      { class: "card" },
      h("h2", {}, "New endpoint"),
      form(
        [
          field("URL", h("input", { name: "url", type: "url", required: true, placeholder: "https://hooks.example.com/tenlyr" })),
          field("Event types (comma-separated; empty: all)", h("input", { name: "eventTypes", placeholder: "tenant.*, health.status_changed" })),
          field("Description", h("input", { name: "description" })),
        ],
        "Add endpoint",
        async (data, el) => {
          const eventTypes = String(data.get("eventTypes") || "")
            .split(",")
            .map((t) => t.trim())
            .filter(Boolean);
          const res = await api("POST", "/api/v1/webhook-endpoints", {
            body: { url: data.get("url"), eventTypes, description: data.get("description") || "" },
          });
          el.reset();
          shown.replaceChildren(
            shownOnce(`Signing secret of ${res.endpoint.url}`, res.secret, "endpoint-secret"),
            h("a", { href: `#/settings/webhooks/${res.endpoint.id}` }, "Open it →"),
          );
          await list();
        },
        { inline: true, testid: "create-endpoint" },
      ),
      shown,
    ),
    holder,
    h("h2", {}, "Verifying what Tenlyr sends"),
    h("pre", {}, snippet()),
  );
}

async function endpointPage(query, id) {
  let endpoint = await api("GET", `/api/v1/webhook-endpoints/${id}`);
  const shown = h("div");
  const act = (label, cls, run, testid) => actionButton(label, cls, run, shown, testid);
  const deliveries = h("div");
  const loadDeliveries = () =>
    deliveries.replaceChildren(
      pagedList(
        (cursor) => api("GET", `/api/v1/webhook-endpoints/${id}/deliveries`, { query: { limit: 50, cursor, status: query.status } }),
        (rows) =>
          table(
            ["Created", "Event", "Status", "Attempts", "Last response", "Next attempt", ""],
            rows.map((d) => [
              time(d.createdAt),
              h("span", {}, d.eventType, h("br"), h("small", { class: "muted" }, d.eventId)),
              badge(d.status),
              d.attempts,
              d.responseStatus ?? (d.lastError || "—"),
              time(d.nextAttemptAt),
              act("Attempts", "secondary", async () => {
                const full = await api("GET", `/api/v1/webhook-endpoints/${id}/deliveries/${d.id}`);
                shown.replaceChildren(
                  h(
                    "div",
                    { class: "card", "data-testid": "attempts" },
                    h("h2", {}, `Attempts of ${d.eventType}`),
                    table(
                      ["#", "When", "Result", "HTTP status", "Latency", "Error or response"],
                      full.attempts.map((a) => [
                        a.attempt,
                        time(a.attemptedAt),
                        a.ok ? badge("ok") : badge("bad"),
                        a.responseStatus ?? "no response",
                        `${a.latencyMs} ms`,
                        a.error || a.responseExcerpt || "",
                      ]),
                      "No attempt yet.",
                    ),
                  ),
                );
              }),
            ]),
            "No deliveries yet: send a test event.",
          ),
      ),
    );
  const header = () =>
    h(
      "div",
      { class: "grid" },
      stat("Status", endpoint.enabled ? "enabled" : "disabled", endpoint.disabledReason || ""),
      stat("Breaker", endpoint.breakerState.replace("_", " ")),
      stat("Events", (endpoint.eventTypes.length ? endpoint.eventTypes : ["every event"]).join(", ")),
      stat(
        "Previous secret",
        endpoint.previousSecretExpiresAt ? "still signing" : "none",
        endpoint.previousSecretExpiresAt ? `until ${time(endpoint.previousSecretExpiresAt)}` : "",
      ),
    );
  const top = h("div", {}, header());
  const refresh = async () => {
    endpoint = await api("GET", `/api/v1/webhook-endpoints/${id}`);
    top.replaceChildren(header());
    loadDeliveries();
  };
  loadDeliveries();
  const since = new Date(Date.now() - 24 * 3600 * 1000).toISOString().slice(0, 16);
  return h(
    "div",
    {},
    h("h1", {}, endpoint.url),
    top,
    h(
      "p",
      {},
      act("Send test event", "", async () => {
        const res = await api("POST", `/api/v1/webhook-endpoints/${id}/test`, { body: {} });
        shown.replaceChildren(h("div", { class: "notice", role: "status", "data-testid": "test-sent" }, `Test event ${res.eventId} queued.`));
        await refresh();
      }, "send-test"),
      " ",
      act(endpoint.enabled ? "Disable" : "Enable", "secondary", async () => {
        await api("PATCH", `/api/v1/webhook-endpoints/${id}`, { body: { enabled: !endpoint.enabled } });
        go(`/settings/webhooks/${id}`, { at: Date.now() });
      }),
      " ",
      act("Rotate secret", "secondary", async () => {
        const res = await api("POST", `/api/v1/webhook-endpoints/${id}/rotate-secret`, { body: {} });
        endpoint = res.endpoint;
        top.replaceChildren(header());
        shown.replaceChildren(
          shownOnce(
            `New signing secret (the previous one keeps signing until ${time(res.endpoint.previousSecretExpiresAt)})`,
            res.secret,
            "rotated-secret",
          ),
        );
      }),
      " ",
      act("Refresh", "secondary", refresh, "refresh"),
      " ",
      act("Delete", "danger", async () => {
        if (!confirm(`Delete ${endpoint.url}? Its pending deliveries are dropped.`)) return;
        await api("DELETE", `/api/v1/webhook-endpoints/${id}`);
        go("/settings/webhooks");
      }),
    ),
    h(
      "div",
      { class: "card" },
      h("h2", {}, "Edit"),
      form(
        [
          field("URL", h("input", { name: "url", type: "url", value: endpoint.url, required: true })),
          field("Event types", h("input", { name: "eventTypes", value: endpoint.eventTypes.join(", ") })),
          field("Description", h("input", { name: "description", value: endpoint.description })),
        ],
        "Save",
        async (data) => {
          endpoint = await api("PATCH", `/api/v1/webhook-endpoints/${id}`, {
            body: {
              url: data.get("url"),
              eventTypes: String(data.get("eventTypes") || "").split(",").map((t) => t.trim()).filter(Boolean),
              description: data.get("description") || "",
            },
          });
          top.replaceChildren(header());
          shown.replaceChildren(h("div", { class: "notice", role: "status" }, "Saved."));
        },
        { inline: true, testid: "edit-endpoint" },
      ),
      h("h2", {}, "Recover failed deliveries"),
      form(
        [field("Since", h("input", { name: "since", type: "datetime-local", value: since, required: true }))],
        "Recover",
        async (data) => {
          const res = await api("POST", `/api/v1/webhook-endpoints/${id}/recover`, {
            body: { since: new Date(data.get("since")).toISOString() },
          });
          shown.replaceChildren(h("div", { class: "notice", role: "status", "data-testid": "recovered" }, `${res.recovered} deliveries queued again.`));
          await refresh();
        },
        { inline: true, testid: "recover" },
      ),
    ),
    shown,
    h("h2", {}, "Deliveries"),
    deliveries,
    h("h2", {}, "Verifying the signatures"),
    h("pre", { "data-testid": "snippet" }, snippet()),
  );
}
