//! Backoffice users and sessions (DESIGN.md §13): the first super admin
//! from the command line, invites, sign-in, the session cookie, CSRF,
//! roles declared on the RPCs, failed-login limits, idle and absolute
//! expiry, reset links, deactivation, and the audit trail — over REST and
//! gRPC.

use std::process::Stdio;

use reqwest::Method;
use serde_json::{Value, json};
use tenlyr::{proto::v1, workers::ManualClock};
use tokio::io::AsyncWriteExt;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_tenlyr");
const PASSWORD: &str = "correct horse battery";

/// A browser's view of the API: its session cookie and CSRF token.
#[derive(Clone, Default)]
struct Browser {
    cookie: Option<String>,
    csrf: String,
}

impl Browser {
    async fn call(
        &mut self,
        app: &TestApp,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut request = app.http.request(method.clone(), app.url(path));
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        if method != Method::GET && !self.csrf.is_empty() {
            request = request.header("x-csrf-token", &self.csrf);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let headers = response.headers().clone();
        let (status, body) = json(response).await;
        if let Some(set) = headers.get("set-cookie") {
            let pair = set.to_str().unwrap().split(';').next().unwrap().to_owned();
            self.cookie = (!pair.ends_with('=')).then_some(pair);
        }
        if let Some(csrf) = body["csrfToken"].as_str() {
            self.csrf = csrf.to_owned();
        }
        (status, body, headers)
    }

    async fn login(app: &TestApp, email: &str, password: &str) -> (u16, Value, Browser) {
        let mut browser = Browser::default();
        let (status, body, _) = browser
            .call(
                app,
                Method::POST,
                "/api/v1/auth/login",
                Some(json!({"email": email, "password": password})),
            )
            .await;
        (status, body, browser)
    }

    /// The same cookie without the CSRF token (what a forged cross-site
    /// request would carry, if the browser sent the cookie at all).
    fn without_csrf(&self) -> Browser {
        Browser {
            cookie: self.cookie.clone(),
            csrf: String::new(),
        }
    }
}

/// `tenlyr admin create-user` against the test database.
async fn cli_user(app: &TestApp, email: &str, role: &str, password: Option<&str>) -> String {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(["admin", "create-user", "--email", email, "--role", role])
        .env("DATABASE_URL", &app.db.url)
        .env("TENLYR_KEY_PEPPER", PEPPER)
        .env("TENLYR_BCRYPT_COST", "4")
        .env("TENLYR_PUBLIC_URL", "https://tenlyr.example")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if password.is_some() {
        command.arg("--password-stdin");
    }
    let mut child = command.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    if let Some(password) = password {
        stdin
            .write_all(format!("{password}\n").as_bytes())
            .await
            .unwrap();
    }
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    if let Some(password) = password {
        assert!(!stderr.contains(password), "the password is logged nowhere");
    }
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn token_of(url: &str) -> String {
    url.split("token=").nth(1).expect("a token").to_owned()
}

/// A super admin signed in.
async fn super_admin(app: &TestApp, email: &str) -> Browser {
    cli_user(app, email, "super_admin", Some(PASSWORD)).await;
    let (status, body, browser) = Browser::login(app, email, PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    browser
}

/// A user created by `by` and signed in through its invite.
async fn invited(
    app: &TestApp,
    by: &mut Browser,
    email: &str,
    role: &str,
    tenant: Option<&str>,
) -> (String, Browser) {
    let (status, created, _) = by
        .call(
            app,
            Method::POST,
            "/api/v1/users",
            Some(json!({"email": email, "role": role, "tenantId": tenant})),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let mut browser = Browser::default();
    let (status, session, _) = browser
        .call(
            app,
            Method::POST,
            "/api/v1/auth/accept-invite",
            Some(json!({"token": token_of(created["inviteUrl"].as_str().unwrap()), "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, 200, "{session}");
    (created["user"]["id"].as_str().unwrap().to_owned(), browser)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_super_admin_signs_in_with_an_http_only_strict_cookie_and_out_again() {
    let app = TestApp::spawn().await;
    cli_user(&app, "Root@Ops.Example", "super_admin", Some(PASSWORD)).await;

    let (status, session, browser) = Browser::login(&app, "root@ops.example", PASSWORD).await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["kind"], "session");
    assert_eq!(session["user"]["email"], "root@ops.example");
    assert_eq!(session["user"]["role"], "super_admin");
    assert_eq!(session["user"]["status"], "active");
    assert_eq!(session["tenant"], Value::Null);
    assert_eq!(session["csrfToken"].as_str().unwrap().len(), 64);
    assert!(session["user"].get("passwordHash").is_none());

    // The cookie: HttpOnly, SameSite=Strict, whole site, absolute lifetime.
    let response = app
        .http
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"email": "root@ops.example", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("tenlyr_session="), "{cookie}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }

    // Who am I; then sign out, and the cookie no longer works.
    let mut browser = browser;
    let (status, me, _) = browser
        .call(&app, Method::GET, "/api/v1/auth/session", None)
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user"]["role"], "super_admin");
    assert_eq!(me["csrfToken"], session["csrfToken"]);
    let stale = browser.clone();
    let (status, _, headers) = browser
        .call(&app, Method::POST, "/api/v1/auth/logout", Some(json!({})))
        .await;
    assert_eq!(status, 200);
    assert!(
        headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let (status, body, _) = stale
        .clone()
        .call(&app, Method::GET, "/api/v1/auth/session", None)
        .await;
    assert_eq!(status, 401, "{body}");
    assert_error_body(&body, 401, "Unauthorized");

    // Without a password the command prints a one-time invite link.
    let link = cli_user(&app, "second@ops.example", "admin", None).await;
    assert!(
        link.starts_with("https://tenlyr.example/backoffice/#/accept-invite?token="),
        "{link}"
    );

    // The audit log has the sign-in and the sign-out, by user.
    let (status, log) =
        admin_call(&app, Method::GET, "/api/v1/audit-logs?action=user.*", None).await;
    assert_eq!(status, 200);
    let actions: Vec<&str> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in ["user.login", "user.logout", "user.create"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    assert!(
        !log.to_string().contains(&token_of(&link)),
        "no token in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_onboards_a_tenant_user_who_sees_only_its_tenant() {
    let app = TestApp::spawn().await;
    let mut admin = super_admin(&app, "ops@onboard.test").await;
    let (tenant, _) = provision(&app, "owner@acme.test", "growth", "Europe/Berlin").await;
    let (other, _) = provision(&app, "owner@globex.test", "growth", "UTC").await;

    // The admin adds the first tenant user; the link is shown once.
    let (owner_id, mut owner) = invited(
        &app,
        &mut admin,
        "dev.lead@acme.test",
        "owner",
        Some(&tenant),
    )
    .await;
    let (status, me, _) = owner
        .call(&app, Method::GET, "/api/v1/auth/session", None)
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["tenant"]["id"], tenant.as_str());
    assert_eq!(me["tenant"]["timeZone"], "Europe/Berlin");
    assert_eq!(me["user"]["role"], "owner");

    // It sees its tenant's keys, not another's, and no admin surface.
    let (status, _, _) = owner
        .call(
            &app,
            Method::GET,
            &format!("/api/v1/tenants/{tenant}/api-keys"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, body, _) = owner
        .call(
            &app,
            Method::GET,
            &format!("/api/v1/tenants/{other}/api-keys"),
            None,
        )
        .await;
    assert!(matches!(status, 403 | 404), "{status} {body}");
    let (status, body, _) = owner.call(&app, Method::GET, "/api/v1/tenants", None).await;
    assert_eq!(status, 403, "{body}");
    let (status, body, _) = owner
        .call(
            &app,
            Method::GET,
            &format!("/api/v1/users?tenantId={other}"),
            None,
        )
        .await;
    assert_eq!(status, 404, "{body}");

    // A state change without the CSRF token is refused and changes nothing.
    let keys_before = owner
        .call(
            &app,
            Method::GET,
            &format!("/api/v1/tenants/{tenant}/api-keys"),
            None,
        )
        .await
        .1["data"]
        .as_array()
        .unwrap()
        .len();
    let (status, body, _) = owner
        .without_csrf()
        .call(
            &app,
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/api-keys"),
            Some(json!({"label": "forged"})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["reason"], "CSRF_TOKEN_INVALID", "{body}");
    let (status, created, _) = owner
        .call(
            &app,
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/api-keys"),
            Some(json!({"label": "production"})),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let keys_after = owner
        .call(
            &app,
            Method::GET,
            &format!("/api/v1/tenants/{tenant}/api-keys"),
            None,
        )
        .await
        .1["data"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        keys_after,
        keys_before + 1,
        "only the real request made a key"
    );
    // A tenant key has no role: it manages no users (a developer's key
    // cannot make its holder an owner).
    let made = created["apiKey"].as_str().unwrap();
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/users".to_owned(),
            Some(json!({"email": "x@acme.test", "role": "owner"})),
        ),
        (Method::GET, "/api/v1/users".to_owned(), None),
        (
            Method::POST,
            format!("/api/v1/users/{owner_id}/password-reset"),
            Some(json!({})),
        ),
        (
            Method::PATCH,
            format!("/api/v1/users/{owner_id}"),
            Some(json!({"active": false})),
        ),
    ] {
        let (status, body) = call(&app, made, method.clone(), &path, body).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
    }

    // Webhook settings are the tenant user's to set.
    let (status, settings, _) = owner
        .call(
            &app,
            Method::PUT,
            "/api/v1/webhooks/settings",
            Some(json!({"providers": [{"provider": "generic", "enabled": true, "secret": "s3cret-generic-hmac"}]})),
        )
        .await;
    assert_eq!(status, 200, "{settings}");

    // A viewer added by the owner reads but cannot create a key.
    let (viewer_id, mut viewer) =
        invited(&app, &mut owner, "watcher@acme.test", "viewer", None).await;
    let (status, body, _) = viewer
        .call(
            &app,
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/api-keys"),
            Some(json!({"label": "nope"})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("viewer"),
        "{body}"
    );
    let (status, _, _) = viewer
        .call(&app, Method::GET, "/api/v1/webhooks/settings", None)
        .await;
    assert_eq!(status, 200);
    // … nor manage users or read the audit log (owners only).
    let (status, _, _) = viewer
        .call(&app, Method::GET, "/api/v1/audit-logs", None)
        .await;
    assert_eq!(status, 403);
    // An owner cannot grant a platform role.
    let (status, body, _) = owner
        .call(
            &app,
            Method::POST,
            "/api/v1/users",
            Some(json!({"email": "sneaky@acme.test", "role": "admin"})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    // Keys-only methods refuse sessions.
    let (status, body, _) = owner
        .call(
            &app,
            Method::POST,
            "/v1/record/lock",
            Some(json!({"key": "order-1"})),
        )
        .await;
    assert_eq!(status, 403, "{body}");

    // The owner's audit log: its tenant's entries, with the acting user.
    let (status, log, _) = owner
        .call(&app, Method::GET, "/api/v1/audit-logs", None)
        .await;
    assert_eq!(status, 200, "{log}");
    let entries = log["data"].as_array().unwrap();
    let by = |action: &str| {
        entries
            .iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("{action} in {log}"))
            .clone()
    };
    assert_eq!(by("key.create")["actorUserId"], owner_id.as_str());
    assert_eq!(
        by("webhook_settings.update")["actorUserId"],
        owner_id.as_str()
    );
    assert_eq!(by("user.create")["targetId"], viewer_id.as_str());
    assert!(entries.iter().any(|e| e["action"] == "user.invite_accept"));
    assert!(
        entries.iter().all(|e| e["tenantId"] == tenant.as_str()),
        "{log}"
    );
    assert!(!log.to_string().contains("s3cret-generic-hmac"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_lock_the_account_but_not_its_neighbours() {
    let clock = ManualClock::new(chrono::Utc::now());
    let app = TestApp::spawn_with_clock(clock.clone()).await;
    cli_user(&app, "victim@lock.test", "admin", Some(PASSWORD)).await;
    cli_user(&app, "bystander@lock.test", "admin", Some(PASSWORD)).await;

    // Unknown email and wrong password read the same.
    let (status, unknown, _) = Browser::login(&app, "ghost@lock.test", PASSWORD).await;
    assert_eq!(status, 401);
    let (status, wrong, _) = Browser::login(&app, "victim@lock.test", "not the password").await;
    assert_eq!(status, 401);
    assert_eq!(unknown["message"], wrong["message"]);
    for _ in 0..4 {
        let (status, _, _) = Browser::login(&app, "victim@lock.test", "still not it!").await;
        assert_eq!(status, 401);
    }
    // Locked: even the right password is refused, with Retry-After.
    let response = app
        .http
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"email": "victim@lock.test", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((800..=900).contains(&retry), "{retry}");
    let (_, body) = json(response).await;
    assert_eq!(body["reason"], "LOGIN_LOCKED", "{body}");
    // Another account from the same address still signs in.
    let (status, _, _) = Browser::login(&app, "bystander@lock.test", PASSWORD).await;
    assert_eq!(status, 200);
    // Parallel guesses at one account get no more tries than the limit.
    cli_user(&app, "burst@lock.test", "admin", Some(PASSWORD)).await;
    let guesses = (0..12).map(|i| {
        let app = &app;
        async move {
            Browser::login(app, "burst@lock.test", &format!("guess number {i}"))
                .await
                .0
        }
    });
    let statuses = futures_util::future::join_all(guesses).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        5,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| matches!(s, 401 | 429)),
        "{statuses:?}"
    );
    // Junk of any length is a plain 401, never a 500.
    let (status, body, _) = Browser::login(&app, &"x".repeat(20_000), PASSWORD).await;
    assert_eq!(status, 401, "{body}");
    // Another site's form cannot sign a victim in to the attacker's account.
    let response = app
        .http
        .post(app.url("/api/v1/auth/login"))
        .header("sec-fetch-site", "cross-site")
        .json(&json!({"email": "bystander@lock.test", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(response.headers().get("set-cookie").is_none());

    // After the lockout the right password works again.
    clock.advance(chrono::Duration::minutes(16));
    let (status, body, _) = Browser::login(&app, "victim@lock.test", PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    let (_, log) = admin_call(
        &app,
        Method::GET,
        "/api/v1/audit-logs?action=user.login_failed",
        None,
    )
    .await;
    // Five for each existing account; the unknown email and the junk none.
    assert_eq!(log["data"].as_array().unwrap().len(), 10, "{log}");
    assert!(!log.to_string().contains("not the password"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_after_idle_time_and_at_their_absolute_expiry() {
    let clock = ManualClock::new(chrono::Utc::now());
    let app = TestApp::spawn_with_clock(clock.clone()).await;
    cli_user(&app, "busy@idle.test", "admin", Some(PASSWORD)).await;

    // Busy: every 25 minutes keeps it alive, until 12 hours after sign-in.
    let (_, _, mut busy) = Browser::login(&app, "busy@idle.test", PASSWORD).await;
    let mut elapsed = chrono::Duration::zero();
    while elapsed + chrono::Duration::minutes(25) < chrono::Duration::hours(12) {
        clock.advance(chrono::Duration::minutes(25));
        elapsed += chrono::Duration::minutes(25);
        let (status, body, _) = busy
            .call(&app, Method::GET, "/api/v1/auth/session", None)
            .await;
        assert_eq!(status, 200, "after {elapsed}: {body}");
    }
    clock.advance(chrono::Duration::hours(12) - elapsed);
    let (status, body, _) = busy
        .call(&app, Method::GET, "/api/v1/auth/session", None)
        .await;
    assert_eq!(status, 401, "{body}");

    // Idle: 31 minutes without a request ends it, even after a flush of
    // the last-seen times.
    let (_, _, mut idle) = Browser::login(&app, "busy@idle.test", PASSWORD).await;
    clock.advance(chrono::Duration::minutes(20));
    let (status, _, _) = idle
        .call(&app, Method::GET, "/api/v1/auth/session", None)
        .await;
    assert_eq!(status, 200);
    app.state.users.flush_seen().await.unwrap();
    clock.advance(chrono::Duration::minutes(31));
    let (status, body, _) = idle
        .call(&app, Method::GET, "/api/v1/auth/session", None)
        .await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_and_reset_links_expire_are_single_use_and_resets_end_sessions() {
    let clock = ManualClock::new(chrono::Utc::now());
    let app = TestApp::spawn_with_clock(clock.clone()).await;
    let mut admin = super_admin(&app, "root@links.test").await;
    let (tenant, _) = provision(&app, "owner@links.test", "starter", "UTC").await;
    let (status, created, _) = admin
        .call(
            &app,
            Method::POST,
            "/api/v1/users",
            Some(json!({"email": "late@links.test", "role": "developer", "tenantId": tenant})),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let user = created["user"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["user"]["status"], "invited");
    let stale = token_of(created["inviteUrl"].as_str().unwrap());

    // An invited user cannot sign in; an expired invite is refused.
    let (status, _, _) = Browser::login(&app, "late@links.test", PASSWORD).await;
    assert_eq!(status, 401);
    clock.advance(chrono::Duration::hours(73));
    let accept = |token: String, password: &'static str| {
        let app = &app;
        async move {
            Browser::default()
                .call(
                    app,
                    Method::POST,
                    "/api/v1/auth/accept-invite",
                    Some(json!({"token": token, "password": password})),
                )
                .await
        }
    };
    let (status, body, _) = accept(stale.clone(), PASSWORD).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["reason"], "LINK_EXPIRED", "{body}");
    let (status, body, _) = accept("x".repeat(43), PASSWORD).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["reason"], "LINK_INVALID", "{body}");

    // A fresh invite (the admin signs in again: its session ended meanwhile);
    // a short password is refused without using it up.
    let (status, _, mut admin) = Browser::login(&app, "root@links.test", PASSWORD).await;
    assert_eq!(status, 200);
    let (status, link, _) = admin
        .call(
            &app,
            Method::POST,
            &format!("/api/v1/users/{user}/password-reset"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{link}");
    assert_eq!(link["kind"], "invite");
    let token = token_of(link["url"].as_str().unwrap());
    let (status, body, _) = accept(token.clone(), "short").await;
    assert_eq!(status, 422, "{body}");
    let (status, body, _) = accept(token.clone(), PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = accept(token, PASSWORD).await;
    assert_eq!(status, 400, "single use");

    // A reset: the old sessions end, the old password stops working.
    let (_, _, mut before) = Browser::login(&app, "late@links.test", PASSWORD).await;
    let (status, link, _) = admin
        .call(
            &app,
            Method::POST,
            &format!("/api/v1/users/{user}/password-reset"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(link["kind"], "reset");
    let (status, body, _) = Browser::default()
        .call(
            &app,
            Method::POST,
            "/api/v1/auth/reset-password",
            Some(json!({"token": token_of(link["url"].as_str().unwrap()), "password": "a brand new passphrase"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = before
        .call(&app, Method::GET, "/api/v1/auth/session", None)
        .await;
    assert_eq!(status, 401, "sessions from before the reset ended");
    let (status, _, _) = Browser::login(&app, "late@links.test", PASSWORD).await;
    assert_eq!(status, 401);
    let (status, _, _) = Browser::login(&app, "late@links.test", "a brand new passphrase").await;
    assert_eq!(status, 200);

    // A reset link lives an hour.
    let (status, _, mut admin) = Browser::login(&app, "root@links.test", PASSWORD).await;
    assert_eq!(status, 200);
    let (status, link, _) = admin
        .call(
            &app,
            Method::POST,
            &format!("/api/v1/users/{user}/password-reset"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    clock.advance(chrono::Duration::minutes(61));
    let (status, body, _) = Browser::default()
        .call(
            &app,
            Method::POST,
            "/api/v1/auth/reset-password",
            Some(json!({"token": token_of(link["url"].as_str().unwrap()), "password": "yet another passphrase"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["reason"], "LINK_EXPIRED", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivation_ends_sessions_and_only_super_admins_manage_platform_users() {
    let app = TestApp::spawn().await;
    let mut root = super_admin(&app, "root@manage.test").await;
    let (tenant, _) = provision(&app, "owner@manage.test", "growth", "UTC").await;
    let (dev_id, mut dev) = invited(
        &app,
        &mut root,
        "dev@manage.test",
        "developer",
        Some(&tenant),
    )
    .await;
    let (admin_id, mut admin) = invited(&app, &mut root, "admin@manage.test", "admin", None).await;

    // A plain admin manages tenant users but not platform users.
    let (status, body, _) = admin
        .call(
            &app,
            Method::POST,
            "/api/v1/users",
            Some(json!({"email": "another@manage.test", "role": "admin"})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body, _) = admin
        .call(
            &app,
            Method::PATCH,
            &format!("/api/v1/users/{admin_id}"),
            Some(json!({"role": "super_admin"})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    // Nobody changes their own account here.
    let (status, body, _) = root
        .call(&app, Method::GET, "/api/v1/auth/session", None)
        .await;
    let root_id = body["user"]["id"].as_str().unwrap().to_owned();
    assert_eq!(status, 200);
    let (status, body, _) = root
        .call(
            &app,
            Method::PATCH,
            &format!("/api/v1/users/{root_id}"),
            Some(json!({"active": false})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    // Roles stay within their kind.
    let (status, body, _) = admin
        .call(
            &app,
            Method::PATCH,
            &format!("/api/v1/users/{dev_id}"),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // Deactivating ends the user's sessions; it cannot sign in again.
    let (status, updated, _) = admin
        .call(
            &app,
            Method::PATCH,
            &format!("/api/v1/users/{dev_id}"),
            Some(json!({"active": false})),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["status"], "deactivated");
    let (status, _, _) = dev
        .call(&app, Method::GET, "/api/v1/auth/session", None)
        .await;
    assert_eq!(status, 401);
    let (status, body, _) = Browser::login(&app, "dev@manage.test", PASSWORD).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["message"].as_str().unwrap().contains("deactivated"));
    let (status, _, _) = admin
        .call(
            &app,
            Method::PATCH,
            &format!("/api/v1/users/{dev_id}"),
            Some(json!({"active": true, "role": "owner"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, me, _) = Browser::login(&app, "dev@manage.test", PASSWORD).await;
    assert_eq!(status, 200);
    assert_eq!(me["user"]["role"], "owner");
    let (status, got, _) = root
        .call(&app, Method::GET, &format!("/api/v1/users/{dev_id}"), None)
        .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["email"], "dev@manage.test");
    assert_eq!(got["status"], "active");
    assert!(got["lastLoginAt"].is_string(), "{got}");

    // Deleting; a duplicate email; listing with the cursor.
    let (status, _, _) = root
        .call(
            &app,
            Method::DELETE,
            &format!("/api/v1/users/{admin_id}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _, _) = admin
        .call(&app, Method::GET, "/api/v1/auth/session", None)
        .await;
    assert_eq!(status, 401, "a deleted user's session is gone");
    let (status, body, _) = root
        .call(
            &app,
            Method::POST,
            "/api/v1/users",
            Some(json!({"email": "DEV@manage.test", "role": "viewer", "tenantId": tenant})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body, _) = root
        .call(
            &app,
            Method::POST,
            "/api/v1/users",
            Some(json!({"email": "nobody", "role": "viewer", "tenantId": tenant})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, platform, _) = root
        .call(&app, Method::GET, "/api/v1/users?platformOnly=true", None)
        .await;
    assert_eq!(status, 200);
    assert!(
        platform["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["tenantId"].is_null()),
        "{platform}"
    );
    let (status, page, _) = root
        .call(&app, Method::GET, "/api/v1/users?limit=1", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    let cursor = page["nextCursor"].as_str().unwrap();
    let (status, next, _) = root
        .call(
            &app,
            Method::GET,
            &format!("/api/v1/users?limit=1&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_ne!(next["data"][0]["id"], page["data"][0]["id"]);
    assert!(next.to_string().find("password").is_none(), "{next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_works_over_grpc_with_the_same_rules() {
    let app = TestApp::spawn().await;
    let mut root = super_admin(&app, "root@grpc-users.test").await;
    let (tenant, _) = provision(&app, "owner@grpc-users.test", "growth", "UTC").await;
    let (_, viewer) = invited(
        &app,
        &mut root,
        "v@grpc-users.test",
        "viewer",
        Some(&tenant),
    )
    .await;

    // Login over gRPC: the cookie comes back as metadata.
    let mut users = v1::user_service_client::UserServiceClient::new(app.channel().await);
    let reply = users
        .login(v1::LoginRequest {
            email: "v@grpc-users.test".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap();
    let cookie = reply
        .metadata()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.contains("HttpOnly"));
    let pair = cookie.split(';').next().unwrap().to_owned();
    let csrf = reply.into_inner().csrf_token;
    fn signed<T>(message: T, cookie: &str, csrf: Option<&str>) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("cookie", cookie.parse().unwrap());
        if let Some(csrf) = csrf {
            request
                .metadata_mut()
                .insert("x-csrf-token", csrf.parse().unwrap());
        }
        request
    }
    let me = users
        .get_session(signed(v1::GetSessionRequest {}, &pair, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.tenant.unwrap().id, tenant);
    assert_eq!(me.user.unwrap().role, v1::UserRole::Viewer as i32);

    // A viewer's key creation is refused over gRPC too.
    let mut tenants = v1::tenant_service_client::TenantServiceClient::new(app.channel().await);
    let refused = tenants
        .create_api_key(signed(
            v1::CreateApiKeyRequest {
                tenant_id: tenant.clone(),
                label: "grpc".into(),
            },
            &pair,
            Some(&csrf),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let keys = tenants
        .list_api_keys(signed(
            v1::ListApiKeysRequest {
                tenant_id: tenant.clone(),
            },
            &pair,
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys.data.len(), 1);
    drop(viewer);

    // Logout over gRPC without the CSRF token is refused.
    let refused = users
        .logout(signed(v1::LogoutRequest {}, &pair, None))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    users
        .logout(signed(v1::LogoutRequest {}, &pair, Some(&csrf)))
        .await
        .unwrap();
    let ended = users
        .get_session(signed(v1::GetSessionRequest {}, &pair, None))
        .await
        .unwrap_err();
    assert_eq!(ended.code(), tonic::Code::Unauthenticated);

    // A key's GetSession says it is a key.
    let me = users
        .get_session(with_key(v1::GetSessionRequest {}, &app.admin_key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.kind, "key");
    assert!(me.user.is_none() && me.csrf_token.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backoffice_is_served_on_the_api_port_with_a_strict_policy() {
    let app = TestApp::spawn().await;
    let page = app.http.get(app.url("/backoffice/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert!(page.text().await.unwrap().contains("/backoffice/app.js"));
    let script = app
        .http
        .get(app.url("/backoffice/app.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), 200);
    assert!(
        script.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(app.url("/backoffice"))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 308);
}
