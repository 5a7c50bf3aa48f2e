//! The inbound gateway's provider adapters (`002_e947b442571a306e.txt`,
//! DESIGN.md §8): each verifies its provider's signature over the exact raw
//! bytes, then extracts the event id (the dedup key), the raw type, when
//! it happened and the JSON payload; [`normalized_type`] maps raw types to
//! Tenlyr's. PayPal's certificate fetch is I/O and lives in
//! `service::paypal`; the message it signs and the header rules are here.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use http::HeaderMap;
use ring::{digest, hmac};
use serde_json::{Map, Value as Json, json};

use super::webhook::decode_hex;

/// Where a signature carries a timestamp (Stripe, generic) it must be
/// within this many seconds of now.
pub const TOLERANCE_SECS: i64 = 300;

/// Longest provider event id kept as the dedup key.
pub const MAX_EVENT_ID: usize = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    Stripe,
    Generic,
    Shopify,
    Paypal,
    Braintree,
    Github,
}

impl Provider {
    pub const ALL: [Provider; 6] = [
        Self::Stripe,
        Self::Generic,
        Self::Shopify,
        Self::Paypal,
        Self::Braintree,
        Self::Github,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Stripe => "stripe",
            Self::Generic => "generic",
            Self::Shopify => "shopify",
            Self::Paypal => "paypal",
            Self::Braintree => "braintree",
            Self::Github => "github",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// Why a webhook is refused; each is a 400 with `{"error": <message>}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    InvalidSignature,
    MissingEventId,
    /// The signature holds but the body is not what the provider sends.
    InvalidPayload(String),
}

impl Rejection {
    pub fn message(&self) -> String {
        match self {
            Self::InvalidSignature => "invalid signature".to_owned(),
            Self::MissingEventId => "missing event id".to_owned(),
            Self::InvalidPayload(why) => format!("invalid payload: {why}"),
        }
    }
}

/// What an adapter reads out of a verified webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct Extracted {
    pub event_id: String,
    pub raw_type: String,
    pub occurred_at: Option<DateTime<Utc>>,
    pub payload: Json,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn hmac_tag(algorithm: hmac::Algorithm, key: &[u8], parts: &[&[u8]]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(algorithm, key));
    for part in parts {
        ctx.update(part);
    }
    ctx.sign()
}

/// Constant-time comparison of a computed tag with a presented one.
fn same(tag: &[u8], presented: &[u8]) -> bool {
    tag.len() == presented.len()
        && tag
            .iter()
            .zip(presented)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// `t=<unix>,v1=<hex>[,v1=…]` (Stripe's scheme, and the generic one): any
/// `v1` matching HMAC-SHA256(secret, "<t>.<body>") for any of `secrets`,
/// `t` within the tolerance; other schemes (`v0`) are ignored.
fn verify_timestamped(header: &str, body: &[u8], secrets: &[&str], now: i64) -> bool {
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v),
            Some(("v1", v)) => signatures.extend(decode_hex(v)),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    let Ok(at) = t.parse::<i64>() else {
        return false;
    };
    if now.abs_diff(at) > TOLERANCE_SECS as u64 {
        return false;
    }
    secrets.iter().any(|secret| {
        let tag = hmac_tag(
            hmac::HMAC_SHA256,
            secret.as_bytes(),
            &[t.as_bytes(), b".", body],
        );
        signatures.iter().any(|s| same(tag.as_ref(), s))
    })
}

/// Verifies an HMAC provider's signature (every provider but PayPal, whose
/// certificate check is `service::paypal`'s) with any of `secrets`: the
/// current one and, for an hour after a change, the previous one.
/// Braintree's secret is `<public key>:<private key>`.
pub fn verify(
    provider: Provider,
    headers: &HeaderMap,
    body: &[u8],
    secrets: &[&str],
    now: i64,
) -> Result<(), Rejection> {
    let ok = match provider {
        Provider::Stripe => header(headers, "stripe-signature")
            .is_some_and(|h| verify_timestamped(h, body, secrets, now)),
        Provider::Generic => header(headers, "x-syllecta-signature")
            .is_some_and(|h| verify_timestamped(h, body, secrets, now)),
        Provider::Shopify => header(headers, "x-shopify-hmac-sha256")
            .and_then(|h| base64::engine::general_purpose::STANDARD.decode(h).ok())
            .is_some_and(|presented| {
                secrets.iter().any(|s| {
                    same(
                        hmac_tag(hmac::HMAC_SHA256, s.as_bytes(), &[body]).as_ref(),
                        &presented,
                    )
                })
            }),
        Provider::Github => header(headers, "x-hub-signature-256")
            .and_then(|h| h.strip_prefix("sha256="))
            .and_then(decode_hex)
            .is_some_and(|presented| {
                secrets.iter().any(|s| {
                    same(
                        hmac_tag(hmac::HMAC_SHA256, s.as_bytes(), &[body]).as_ref(),
                        &presented,
                    )
                })
            }),
        Provider::Braintree => verify_braintree(body, secrets),
        Provider::Paypal => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Rejection::InvalidSignature)
    }
}

/// Splits a Braintree secret `<public key>:<private key>`.
pub fn braintree_keys(secret: &str) -> Option<(&str, &str)> {
    secret
        .split_once(':')
        .filter(|(public, private)| !public.is_empty() && !private.is_empty())
}

/// Braintree's form fields `bt_signature` and `bt_payload`.
fn braintree_form(body: &[u8]) -> (Option<String>, Option<String>) {
    let (mut signature, mut payload) = (None, None);
    for (name, value) in form_urlencoded::parse(body) {
        match name.as_ref() {
            "bt_signature" => signature = Some(value.into_owned()),
            "bt_payload" => payload = Some(value.into_owned()),
            _ => {}
        }
    }
    (signature, payload)
}

/// The payload as Braintree's SDKs accept it: base64 characters and
/// newlines only.
fn braintree_payload_chars(payload: &str) -> bool {
    !payload.is_empty()
        && payload
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'\n'))
}

/// HMAC-SHA1 keyed with SHA-1 of the private key, hex, as Braintree signs.
fn braintree_hmac(private_key: &str, message: &[u8]) -> hmac::Tag {
    let key = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, private_key.as_bytes());
    hmac_tag(
        hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        key.as_ref(),
        &[message],
    )
}

fn verify_braintree(body: &[u8], secrets: &[&str]) -> bool {
    let (Some(signature), Some(payload)) = braintree_form(body) else {
        return false;
    };
    if !braintree_payload_chars(&payload) {
        return false;
    }
    secrets
        .iter()
        .filter_map(|s| braintree_keys(s))
        .any(|(public, private)| {
            signature
                .split('&')
                .filter_map(|pair| pair.split_once('|'))
                .filter(|(key, _)| *key == public)
                .filter_map(|(_, hex)| decode_hex(hex))
                .any(|presented| {
                    let with_newline = format!("{payload}\n");
                    same(
                        braintree_hmac(private, payload.as_bytes()).as_ref(),
                        &presented,
                    ) || same(
                        braintree_hmac(private, with_newline.as_bytes()).as_ref(),
                        &presented,
                    )
                })
        })
}

/// The answer to Braintree's `bt_challenge` when a webhook URL is
/// registered: `<public key>|<hex HMAC-SHA1(SHA-1(private key), challenge)>`.
/// The challenge must look as Braintree's SDKs require (20 to 32
/// lowercase hex digits): the answer is the same HMAC that signs payloads,
/// so an arbitrary challenge would be a signing oracle. No hex string is a
/// payload [`extract`] accepts (base64 of a `<notification>`).
pub fn braintree_challenge(secret: &str, challenge: &str) -> Option<String> {
    let valid = (20..=32).contains(&challenge.len())
        && challenge
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let (public, private) = braintree_keys(secret).filter(|_| valid)?;
    Some(format!(
        "{public}|{}",
        hex(braintree_hmac(private, challenge.as_bytes()).as_ref())
    ))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The PayPal transmission headers and the message their signature covers:
/// `<transmission id>|<transmission time>|<webhook id>|<CRC32 of the body
/// as an unsigned decimal>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaypalTransmission {
    pub cert_url: String,
    pub message: String,
    pub signature: Vec<u8>,
}

pub fn paypal_transmission(
    headers: &HeaderMap,
    body: &[u8],
    webhook_id: &str,
) -> Result<PaypalTransmission, Rejection> {
    let get = |name| header(headers, name).filter(|v| !v.is_empty());
    let (Some(id), Some(time), Some(sig), Some(cert_url)) = (
        get("paypal-transmission-id"),
        get("paypal-transmission-time"),
        get("paypal-transmission-sig"),
        get("paypal-cert-url"),
    ) else {
        return Err(Rejection::InvalidSignature);
    };
    if get("paypal-auth-algo").is_some_and(|a| !a.eq_ignore_ascii_case("SHA256withRSA")) {
        return Err(Rejection::InvalidSignature);
    }
    let signature = base64::engine::general_purpose::STANDARD
        .decode(sig)
        .map_err(|_| Rejection::InvalidSignature)?;
    Ok(PaypalTransmission {
        cert_url: cert_url.to_owned(),
        message: format!("{id}|{time}|{webhook_id}|{}", crc32fast::hash(body)),
        signature,
    })
}

/// Whether a `PAYPAL-CERT-URL` may be fetched: `https` on a host matching
/// one of `allowed` (`*.paypal.com` matches `api.paypal.com`, not
/// `paypal.com.evil`), or, for tests, an entry that is a whole `http(s)://`
/// origin the URL starts with.
pub fn paypal_cert_url_allowed(raw: &str, allowed: &[String]) -> bool {
    let Ok(url) = url::Url::parse(raw) else {
        return false;
    };
    let Some(host) = url.host_str() else {
        return false;
    };
    if url.username() != "" || url.password().is_some() {
        return false;
    }
    allowed.iter().any(|entry| {
        if entry.starts_with("https://") || entry.starts_with("http://") {
            let origin = entry.trim_end_matches('/');
            return raw.starts_with(origin) && raw.as_bytes().get(origin.len()) == Some(&b'/');
        }
        if url.scheme() != "https" || url.port().is_some_and(|p| p != 443) {
            return false;
        }
        match entry.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .is_some_and(|head| head.ends_with('.') && head.len() > 1),
            None => host.eq_ignore_ascii_case(entry),
        }
    })
}

fn json_body(body: &[u8]) -> Result<Map<String, Json>, Rejection> {
    match serde_json::from_slice::<Json>(body) {
        Ok(Json::Object(map)) => Ok(map),
        Ok(_) => Err(Rejection::InvalidPayload(
            "the body must be a JSON object".into(),
        )),
        Err(err) => Err(Rejection::InvalidPayload(format!("malformed JSON: {err}"))),
    }
}

/// A text the log keeps: no NUL (Postgres text cannot hold one), at most
/// [`MAX_EVENT_ID`] bytes.
fn text_field(raw: &str) -> Result<String, Rejection> {
    if raw.contains('\0') {
        return Err(Rejection::InvalidPayload(
            "a NUL character in the event id or type".into(),
        ));
    }
    if raw.len() > MAX_EVENT_ID {
        return Err(Rejection::InvalidPayload(format!(
            "the event type is longer than {MAX_EVENT_ID} bytes"
        )));
    }
    Ok(raw.to_owned())
}

fn event_id(raw: Option<&str>) -> Result<String, Rejection> {
    if raw.is_some_and(|id| id.contains('\0')) {
        return Err(Rejection::InvalidPayload(
            "a NUL character in the event id".into(),
        ));
    }
    match raw.map(str::trim) {
        Some(id) if !id.is_empty() && id.len() <= MAX_EVENT_ID => Ok(id.to_owned()),
        Some(id) if !id.is_empty() => Err(Rejection::InvalidPayload(format!(
            "the event id is longer than {MAX_EVENT_ID} bytes"
        ))),
        _ => Err(Rejection::MissingEventId),
    }
}

fn str_field<'a>(map: &'a Map<String, Json>, name: &str) -> Option<&'a str> {
    map.get(name).and_then(Json::as_str)
}

fn unix(secs: Option<i64>) -> Option<DateTime<Utc>> {
    secs.and_then(|s| DateTime::from_timestamp(s, 0))
}

fn rfc3339(raw: Option<&str>) -> Option<DateTime<Utc>> {
    raw.and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Reads a verified webhook: its event id (DESIGN.md §8 names which per
/// provider), raw type, time and payload.
pub fn extract(
    provider: Provider,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Extracted, Rejection> {
    match provider {
        Provider::Stripe => {
            let map = json_body(body)?;
            Ok(Extracted {
                event_id: event_id(str_field(&map, "id"))?,
                raw_type: text_field(str_field(&map, "type").unwrap_or_default())?,
                occurred_at: unix(map.get("created").and_then(Json::as_i64)),
                payload: Json::Object(map),
            })
        }
        Provider::Generic => {
            let map = json_body(body)?;
            let id = str_field(&map, "id").or_else(|| header(headers, "x-syllecta-event-id"));
            let raw_type = str_field(&map, "type")
                .or_else(|| header(headers, "x-syllecta-event-type"))
                .unwrap_or_default();
            let occurred_at = rfc3339(str_field(&map, "occurredAt"))
                .or_else(|| unix(map.get("created").and_then(Json::as_i64)));
            Ok(Extracted {
                event_id: event_id(id)?,
                raw_type: text_field(raw_type)?,
                occurred_at,
                payload: Json::Object(map),
            })
        }
        Provider::Shopify => {
            let map = json_body(body)?;
            Ok(Extracted {
                event_id: event_id(header(headers, "x-shopify-webhook-id"))?,
                raw_type: header(headers, "x-shopify-topic")
                    .unwrap_or_default()
                    .to_owned(),
                occurred_at: rfc3339(header(headers, "x-shopify-triggered-at")),
                payload: Json::Object(map),
            })
        }
        Provider::Github => {
            let map = json_body(body)?;
            let event = header(headers, "x-github-event").unwrap_or_default();
            let raw_type = match str_field(&map, "action") {
                Some(action) if !event.is_empty() => format!("{event}.{action}"),
                _ => event.to_owned(),
            };
            Ok(Extracted {
                event_id: event_id(header(headers, "x-github-delivery"))?,
                raw_type: text_field(&raw_type)?,
                occurred_at: None,
                payload: Json::Object(map),
            })
        }
        Provider::Paypal => {
            let map = json_body(body)?;
            Ok(Extracted {
                event_id: event_id(str_field(&map, "id"))?,
                raw_type: text_field(str_field(&map, "event_type").unwrap_or_default())?,
                occurred_at: rfc3339(str_field(&map, "create_time")),
                payload: Json::Object(map),
            })
        }
        Provider::Braintree => extract_braintree(body),
    }
}

/// Braintree's payload is base64 XML; the event id is SHA-256 of
/// `bt_payload` (Braintree sends no id), the type is its `<kind>`.
fn extract_braintree(body: &[u8]) -> Result<Extracted, Rejection> {
    let (_, Some(payload)) = braintree_form(body) else {
        return Err(Rejection::MissingEventId);
    };
    let compact: String = payload.chars().filter(|c| *c != '\n').collect();
    let xml = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| Rejection::InvalidPayload("bt_payload is not base64 of UTF-8 XML".into()))?;
    if !xml.contains("<notification") {
        return Err(Rejection::InvalidPayload(
            "bt_payload is not a Braintree notification".into(),
        ));
    }
    let kind = xml_element(&xml, "kind")
        .filter(|k| !k.is_empty())
        .ok_or_else(|| Rejection::InvalidPayload("the notification has no <kind>".into()))?;
    let timestamp = xml_element(&xml, "timestamp");
    Ok(Extracted {
        event_id: hex(digest::digest(&digest::SHA256, payload.as_bytes()).as_ref()),
        raw_type: text_field(kind)?,
        occurred_at: rfc3339(timestamp),
        payload: json!({"kind": kind, "timestamp": timestamp, "xml": xml}),
    })
}

/// The text of the first `<name …>text</name>` in `xml` (Braintree's
/// notification envelope is flat enough for this; the whole XML is kept).
fn xml_element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = xml.find(&format!("<{name}"))?;
    let start = open + xml[open..].find('>')? + 1;
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    Some(xml[start..end].trim())
}

/// Raw provider types Tenlyr maps to its own, in one place (documented in
/// `docs/inbound-webhooks.md`). An unmapped type becomes
/// `<provider>.<raw type>` in lower case with `/` as `.` (`shopify.orders.create`);
/// a generic type is already the sender's own and is kept as it is.
pub const NORMALIZED_TYPES: &[(Provider, &str, &str)] = &[
    (Provider::Stripe, "charge.succeeded", "payment.succeeded"),
    (
        Provider::Stripe,
        "payment_intent.succeeded",
        "payment.succeeded",
    ),
    (Provider::Stripe, "charge.failed", "payment.failed"),
    (
        Provider::Stripe,
        "payment_intent.payment_failed",
        "payment.failed",
    ),
    (Provider::Stripe, "invoice.payment_failed", "payment.failed"),
    (Provider::Stripe, "invoice.paid", "invoice.paid"),
    (
        Provider::Stripe,
        "invoice.payment_succeeded",
        "invoice.paid",
    ),
    (Provider::Stripe, "charge.refunded", "refund.succeeded"),
    (
        Provider::Stripe,
        "charge.dispute.created",
        "chargeback.opened",
    ),
    (
        Provider::Stripe,
        "charge.dispute.updated",
        "chargeback.under_review",
    ),
    (
        Provider::Stripe,
        "charge.dispute.closed",
        "chargeback.closed",
    ),
    (
        Provider::Stripe,
        "customer.subscription.created",
        "subscription.created",
    ),
    (
        Provider::Stripe,
        "customer.subscription.updated",
        "subscription.updated",
    ),
    (
        Provider::Stripe,
        "customer.subscription.deleted",
        "subscription.canceled",
    ),
    (
        Provider::Paypal,
        "PAYMENT.CAPTURE.COMPLETED",
        "payment.succeeded",
    ),
    (
        Provider::Paypal,
        "PAYMENT.SALE.COMPLETED",
        "payment.succeeded",
    ),
    (Provider::Paypal, "PAYMENT.CAPTURE.DENIED", "payment.failed"),
    (
        Provider::Paypal,
        "PAYMENT.CAPTURE.REFUNDED",
        "refund.succeeded",
    ),
    (
        Provider::Paypal,
        "CUSTOMER.DISPUTE.CREATED",
        "chargeback.opened",
    ),
    (
        Provider::Paypal,
        "CUSTOMER.DISPUTE.UPDATED",
        "chargeback.under_review",
    ),
    (
        Provider::Paypal,
        "CUSTOMER.DISPUTE.RESOLVED",
        "chargeback.closed",
    ),
    (
        Provider::Paypal,
        "BILLING.SUBSCRIPTION.CREATED",
        "subscription.created",
    ),
    (
        Provider::Paypal,
        "BILLING.SUBSCRIPTION.UPDATED",
        "subscription.updated",
    ),
    (
        Provider::Paypal,
        "BILLING.SUBSCRIPTION.CANCELLED",
        "subscription.canceled",
    ),
    (
        Provider::Braintree,
        "transaction_settled",
        "payment.succeeded",
    ),
    (
        Provider::Braintree,
        "subscription_charged_successfully",
        "payment.succeeded",
    ),
    (
        Provider::Braintree,
        "transaction_settlement_declined",
        "payment.failed",
    ),
    (
        Provider::Braintree,
        "subscription_charged_unsuccessfully",
        "payment.failed",
    ),
    (Provider::Braintree, "dispute_opened", "chargeback.opened"),
    (
        Provider::Braintree,
        "dispute_under_review",
        "chargeback.under_review",
    ),
    (Provider::Braintree, "dispute_won", "chargeback.closed"),
    (Provider::Braintree, "dispute_lost", "chargeback.closed"),
    (Provider::Braintree, "dispute_accepted", "chargeback.closed"),
    (
        Provider::Braintree,
        "subscription_canceled",
        "subscription.canceled",
    ),
    (Provider::Shopify, "orders/paid", "payment.succeeded"),
    (Provider::Shopify, "refunds/create", "refund.succeeded"),
    (Provider::Shopify, "disputes/create", "chargeback.opened"),
    (
        Provider::Shopify,
        "disputes/update",
        "chargeback.under_review",
    ),
    (Provider::Shopify, "orders/create", "order.created"),
    (Provider::Shopify, "orders/cancelled", "order.canceled"),
];

pub fn normalized_type(provider: Provider, raw: &str) -> String {
    if let Some((_, _, mapped)) = NORMALIZED_TYPES
        .iter()
        .find(|(p, r, _)| *p == provider && *r == raw)
    {
        return (*mapped).to_owned();
    }
    if raw.is_empty() {
        return format!("{}.unknown", provider.name());
    }
    if provider == Provider::Generic {
        return raw.to_owned();
    }
    format!(
        "{}.{}",
        provider.name(),
        raw.to_ascii_lowercase().replace('/', ".")
    )
}

/// Request headers forwarded in the normalized payload: the provider's own
/// and the content type, never credentials (`authorization`, cookies).
pub fn forwarded_header(name: &str) -> bool {
    name == "content-type"
        || name == "user-agent"
        || name == "stripe-signature"
        || name.starts_with("x-shopify-")
        || name.starts_with("x-github-")
        || name.starts_with("x-hub-signature")
        || name.starts_with("paypal-")
        || name.starts_with("x-syllecta-")
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn stripe_header(secret: &str, t: i64, body: &[u8]) -> String {
        let tag = hmac_tag(
            hmac::HMAC_SHA256,
            secret.as_bytes(),
            &[t.to_string().as_bytes(), b".", body],
        );
        format!("t={t},v1={}", hex(tag.as_ref()))
    }

    #[test]
    fn github_documented_example_verifies() {
        // docs.github.com "Validating webhook deliveries": secret
        // "It's a Secret to Everybody", payload "Hello, World!".
        let h = headers(&[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        let secret = ["It's a Secret to Everybody"];
        assert_eq!(
            verify(Provider::Github, &h, b"Hello, World!", &secret, 0),
            Ok(())
        );
        assert_eq!(
            verify(Provider::Github, &h, b"Hello, World?", &secret, 0),
            Err(Rejection::InvalidSignature)
        );
    }

    #[test]
    fn stripe_accepts_any_v1_ignores_other_schemes_and_checks_the_tolerance() {
        let body = br#"{"id":"evt_1","type":"charge.dispute.updated","created":1700000000}"#;
        let good = stripe_header("whsec_abc", 1_700_000_000, body);
        let v1 = good.split_once(",v1=").unwrap().1;
        let h = headers(&[(
            "stripe-signature",
            &format!("t=1700000000,v0=00,v1={},v1={v1}", "ab".repeat(32)),
        )]);
        assert_eq!(
            verify(Provider::Stripe, &h, body, &["whsec_abc"], 1_700_000_100),
            Ok(())
        );
        assert_eq!(
            verify(Provider::Stripe, &h, body, &["whsec_abc"], 1_700_000_301),
            Err(Rejection::InvalidSignature)
        );
        // The previous secret still verifies during its grace.
        assert_eq!(
            verify(
                Provider::Stripe,
                &h,
                body,
                &["whsec_new", "whsec_abc"],
                1_700_000_000
            ),
            Ok(())
        );
        let truncated = headers(&[("stripe-signature", &good[..good.len() - 2])]);
        assert!(
            verify(
                Provider::Stripe,
                &truncated,
                body,
                &["whsec_abc"],
                1_700_000_000
            )
            .is_err()
        );
        let e = extract(Provider::Stripe, &h, body).unwrap();
        assert_eq!(e.event_id, "evt_1");
        assert_eq!(
            normalized_type(Provider::Stripe, &e.raw_type),
            "chargeback.under_review"
        );
        assert_eq!(e.occurred_at.unwrap().timestamp(), 1_700_000_000);
    }

    #[test]
    fn nul_characters_and_absurd_timestamps_are_refused_not_logged() {
        let body = br#"{"id":"evt\u0000x","type":"a"}"#;
        assert!(matches!(
            extract(Provider::Stripe, &headers(&[]), body),
            Err(Rejection::InvalidPayload(_))
        ));
        let body = br#"{"id":"evt_1","type":"a\u0000"}"#;
        assert!(matches!(
            extract(Provider::Stripe, &headers(&[]), body),
            Err(Rejection::InvalidPayload(_))
        ));
        let h = headers(&[("stripe-signature", "t=-9223372036854775808,v1=00")]);
        assert!(verify(Provider::Stripe, &h, b"{}", &["s"], i64::MAX).is_err());
    }

    #[test]
    fn generic_takes_the_header_id_when_the_body_has_none() {
        let body = br#"{"type":"order.shipped"}"#;
        let h = headers(&[
            (
                "x-syllecta-signature",
                &stripe_header("s3cretkey", 10, body),
            ),
            ("x-syllecta-event-id", "ev-9"),
        ]);
        assert_eq!(
            verify(Provider::Generic, &h, body, &["s3cretkey"], 10),
            Ok(())
        );
        let e = extract(Provider::Generic, &h, body).unwrap();
        assert_eq!(
            (e.event_id.as_str(), e.raw_type.as_str()),
            ("ev-9", "order.shipped")
        );
        assert_eq!(
            normalized_type(Provider::Generic, "order.shipped"),
            "order.shipped"
        );
        let none = headers(&[]);
        assert_eq!(
            extract(Provider::Generic, &none, body),
            Err(Rejection::MissingEventId)
        );
        assert!(matches!(
            extract(Provider::Generic, &none, b"not json"),
            Err(Rejection::InvalidPayload(_))
        ));
    }

    #[test]
    fn shopify_is_base64_hmac_of_the_body() {
        let body = br#"{"id":1}"#;
        let tag = hmac_tag(hmac::HMAC_SHA256, b"shpss_secret", &[body]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
        let h = headers(&[
            ("x-shopify-hmac-sha256", &b64),
            (
                "x-shopify-webhook-id",
                "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
            ),
            ("x-shopify-topic", "orders/create"),
        ]);
        assert_eq!(
            verify(Provider::Shopify, &h, body, &["shpss_secret"], 0),
            Ok(())
        );
        assert!(verify(Provider::Shopify, &h, br#"{"id":2}"#, &["shpss_secret"], 0).is_err());
        let e = extract(Provider::Shopify, &h, body).unwrap();
        assert_eq!(
            normalized_type(Provider::Shopify, &e.raw_type),
            "order.created"
        );
        assert_eq!(
            normalized_type(Provider::Shopify, "carts/update"),
            "shopify.carts.update"
        );
    }

    #[test]
    fn braintree_signs_with_sha1_of_the_private_key_and_answers_challenges() {
        // The Braintree SDKs' own test values: public key
        // "integration_public_key", private key "integration_private_key".
        let secret = "integration_public_key:integration_private_key";
        assert_eq!(
            braintree_challenge(secret, "20f9f8ed05f77439fe955c977e4c8a53").unwrap(),
            "integration_public_key|d9b899556c966b3f06945ec21311865d35df3ce4"
        );
        let xml = "<notification><kind>dispute_opened</kind>\
                   <timestamp type=\"datetime\">2026-02-23T02:59:56Z</timestamp></notification>";
        let payload = base64::engine::general_purpose::STANDARD.encode(xml) + "\n";
        let sig = hex(braintree_hmac("integration_private_key", payload.as_bytes()).as_ref());
        let form: String = form_urlencoded::Serializer::new(String::new())
            .append_pair(
                "bt_signature",
                &format!("other_key|00&integration_public_key|{sig}"),
            )
            .append_pair("bt_payload", &payload)
            .finish();
        let none = headers(&[]);
        assert_eq!(
            verify(Provider::Braintree, &none, form.as_bytes(), &[secret], 0),
            Ok(())
        );
        assert!(
            verify(
                Provider::Braintree,
                &none,
                form.as_bytes(),
                &["integration_public_key:other"],
                0
            )
            .is_err()
        );
        let e = extract(Provider::Braintree, &none, form.as_bytes()).unwrap();
        assert_eq!(e.raw_type, "dispute_opened");
        assert_eq!(
            normalized_type(Provider::Braintree, &e.raw_type),
            "chargeback.opened"
        );
        assert_eq!(e.event_id.len(), 64);
        // The challenge is no signing oracle: only Braintree's format is
        // answered, and no such string is a payload the gateway accepts.
        assert!(braintree_challenge(secret, "PG5vdGlmaWNhdGlvbj4gICAg").is_none());
        assert!(braintree_challenge(secret, "abc").is_none());
        let forged = form_urlencoded::Serializer::new(String::new())
            .append_pair(
                "bt_signature",
                &format!(
                    "integration_public_key|{}",
                    hex(
                        braintree_hmac("integration_private_key", b"0123456789abcdef0123").as_ref()
                    )
                ),
            )
            .append_pair("bt_payload", "0123456789abcdef0123")
            .finish();
        assert_eq!(
            verify(Provider::Braintree, &none, forged.as_bytes(), &[secret], 0),
            Ok(())
        );
        assert!(matches!(
            extract(Provider::Braintree, &none, forged.as_bytes()),
            Err(Rejection::InvalidPayload(_))
        ));
        // Characters outside base64 are refused before any HMAC.
        let bad: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("bt_signature", &format!("integration_public_key|{sig}"))
            .append_pair("bt_payload", "abc$def")
            .finish();
        assert!(verify(Provider::Braintree, &none, bad.as_bytes(), &[secret], 0).is_err());
    }

    #[test]
    fn paypal_message_uses_the_unsigned_crc32_of_the_body() {
        let h = headers(&[
            (
                "paypal-transmission-id",
                "69cd13f0-d67a-11e5-baa3-778b53f4ae55",
            ),
            ("paypal-transmission-time", "2016-02-18T20:01:35Z"),
            ("paypal-transmission-sig", "AAAA"),
            (
                "paypal-cert-url",
                "https://api.paypal.com/v1/notifications/certs/CERT-1",
            ),
            ("paypal-auth-algo", "SHA256withRSA"),
        ]);
        let t = paypal_transmission(&h, b"{}", "1JE4291016473214C").unwrap();
        assert_eq!(
            t.message,
            format!(
                "69cd13f0-d67a-11e5-baa3-778b53f4ae55|2016-02-18T20:01:35Z|1JE4291016473214C|{}",
                crc32fast::hash(b"{}")
            )
        );
        let allowed = ["*.paypal.com".to_owned()];
        assert!(paypal_cert_url_allowed(&t.cert_url, &allowed));
        for bad in [
            "http://api.paypal.com/cert",
            "https://paypal.com.evil.example/cert",
            "https://evilpaypal.com/cert",
            "https://api.paypal.com:8443/cert",
            "https://user@api.paypal.com/cert",
        ] {
            assert!(!paypal_cert_url_allowed(bad, &allowed), "{bad}");
        }
        let test_origin = ["http://127.0.0.1:9000".to_owned()];
        assert!(paypal_cert_url_allowed(
            "http://127.0.0.1:9000/c.pem",
            &test_origin
        ));
        assert!(!paypal_cert_url_allowed(
            "http://127.0.0.1:90001/c.pem",
            &test_origin
        ));
    }
}
