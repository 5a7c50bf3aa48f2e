//! Inbound webhook settings: the callback URL behind the SSRF guard,
//! write-only provider secrets, every provider's inbound URL, audit, and
//! tenant isolation, over REST and gRPC.

use reqwest::Method;
use serde_json::{Value, json};
use tenlyr::proto::v1;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_keep_secrets_write_only_and_check_the_callback_url() {
    let app = TestApp::spawn_with(|c| c.public_url = Some("https://api.tenlyr.test/".into())).await;
    let (tenant, key) = provision(&app, "hooks@settings.test", "growth", "UTC").await;
    let (_, other_key) = provision(&app, "other@settings.test", "growth", "UTC").await;

    // Nothing configured yet: every provider listed, disabled, with its URL.
    let (status, empty) = call(&app, &key, Method::GET, "/api/v1/webhooks/settings", None).await;
    assert_eq!(status, 200, "{empty}");
    assert_eq!(empty["callbackUrl"], Value::Null);
    let providers = empty["providers"].as_array().unwrap();
    assert_eq!(providers.len(), 6);
    let stripe = providers
        .iter()
        .find(|p| p["provider"] == "stripe")
        .unwrap();
    assert_eq!(stripe["enabled"], false);
    assert_eq!(stripe["secretConfigured"], false);
    let (_, tenant_row) = call(
        &app,
        &app.admin_key,
        Method::GET,
        &format!("/api/v1/tenants/{tenant}"),
        None,
    )
    .await;
    assert_eq!(
        stripe["inboundUrl"],
        format!(
            "https://api.tenlyr.test/v1/t/{}/webhooks/stripe",
            tenant_row["slug"].as_str().unwrap()
        )
    );

    let secret = "whsec_settings_test_secret";
    let (status, saved) = call(
        &app,
        &key,
        Method::PUT,
        "/api/v1/webhooks/settings",
        Some(json!({
            "callbackUrl": "http://127.0.0.1:9/hooks",
            "providers": [
                {"provider": "stripe", "enabled": true, "secret": secret},
                {"provider": "github", "enabled": false, "secret": "gh-secret-123"}
            ]
        })),
    )
    .await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(saved["callbackUrl"], "http://127.0.0.1:9/hooks");
    let find = |v: &Value, name: &str| {
        v["providers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["provider"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(find(&saved, "stripe")["enabled"], true);
    assert_eq!(find(&saved, "stripe")["secretConfigured"], true);
    assert_eq!(find(&saved, "github")["secretConfigured"], true);
    assert!(saved["updatedAt"].is_string());
    assert!(
        !saved.to_string().contains(secret),
        "secrets are never returned"
    );

    // Stored sealed: the plaintext is nowhere in the row.
    let mut owner = app.db.connect().await;
    let sealed: Vec<u8> =
        sqlx::query_scalar("SELECT secret FROM tenant_webhook_providers WHERE provider = 'stripe'")
            .fetch_one(&mut owner)
            .await
            .unwrap();
    assert!(!sealed.windows(secret.len()).any(|w| w == secret.as_bytes()));

    // Keeping the secret: leave it out. Disabling keeps it stored.
    let (_, kept) = call(
        &app,
        &key,
        Method::PUT,
        "/api/v1/webhooks/settings",
        Some(json!({"providers": [{"provider": "stripe", "enabled": false}]})),
    )
    .await;
    assert_eq!(find(&kept, "stripe")["enabled"], false);
    assert_eq!(find(&kept, "stripe")["secretConfigured"], true);
    assert_eq!(
        kept["callbackUrl"], "http://127.0.0.1:9/hooks",
        "absent keeps it"
    );

    // Bad input: 422 naming the field.
    for (body, field) in [
        (json!({"callbackUrl": "ftp://x.test/"}), "callbackUrl"),
        (
            json!({"providers": [{"provider": "shopify", "enabled": true}]}),
            "providers[0].secret",
        ),
        (
            json!({"providers": [{"provider": "shopify", "enabled": true, "secret": "short"}]}),
            "providers[0].secret",
        ),
        (
            json!({"providers": [{"provider": "stripe"}, {"provider": "stripe"}]}),
            "providers[1].provider",
        ),
        (
            json!({"providers": [{"enabled": true, "secret": "whatever-secret"}]}),
            "providers[0].provider",
        ),
    ] {
        let (status, reply) = call(
            &app,
            &key,
            Method::PUT,
            "/api/v1/webhooks/settings",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 422, "{body}: {reply}");
        assert!(
            reply["details"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["field"] == field),
            "{field}: {reply}"
        );
    }
    // The SSRF guard refuses an internal callback without the allow list.
    let closed = TestApp::spawn_with(|c| c.webhook_allowed_cidrs.clear()).await;
    let (_, closed_key) = provision(&closed, "closed@settings.test", "growth", "UTC").await;
    let (status, reply) = call(
        &closed,
        &closed_key,
        Method::PUT,
        "/api/v1/webhooks/settings",
        Some(json!({"callbackUrl": "http://169.254.169.254/latest"})),
    )
    .await;
    assert_eq!(status, 422, "{reply}");
    assert!(
        reply["details"][0]["description"]
            .as_str()
            .unwrap()
            .contains("metadata"),
        "{reply}"
    );

    // Another tenant sees only its own settings; an admin key is refused.
    let (_, theirs) = call(
        &app,
        &other_key,
        Method::GET,
        "/api/v1/webhooks/settings",
        None,
    )
    .await;
    assert_eq!(theirs["callbackUrl"], Value::Null);
    assert_eq!(find(&theirs, "stripe")["secretConfigured"], false);
    let (status, _) = call(
        &app,
        &app.admin_key,
        Method::GET,
        "/api/v1/webhooks/settings",
        None,
    )
    .await;
    assert_eq!(status, 403);

    // Audited, without secrets.
    let audit: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT details FROM audit_log WHERE action = 'webhook_settings.update' ORDER BY occurred_at",
    )
    .fetch_all(&mut owner)
    .await
    .unwrap();
    assert_eq!(audit.len(), 2);
    assert!(!audit[0].to_string().contains(secret));
    assert_eq!(audit[0]["providers"][0]["secretChanged"], true);

    // gRPC sees the same.
    let mut grpc = v1::webhook_service_client::WebhookServiceClient::new(app.channel().await);
    let got = grpc
        .get_webhook_settings(with_key(v1::GetWebhookSettingsRequest {}, &key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.callback_url.as_deref(),
        Some("http://127.0.0.1:9/hooks")
    );
    assert_eq!(got.providers.len(), 6);
}
