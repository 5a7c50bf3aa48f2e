//! Outbound webhooks (DESIGN.md §8): endpoint rules, event types, signing,
//! the retry schedule, the circuit breaker and the SSRF address rules.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use base64::Engine as _;
use ring::hmac;

use super::tenant::violation;
use crate::error::FieldViolation;

pub const SECRET_PREFIX: &str = "whsec_";
pub const MAX_URL: usize = 2048;
pub const MAX_DESCRIPTION: usize = 500;
pub const MAX_EVENT_TYPES: usize = 50;
/// How much of a response body an attempt keeps.
pub const EXCERPT_BYTES: usize = 4096;
/// How far back `recover` may reach.
pub const RECOVER_WINDOW: chrono::Duration = chrono::Duration::days(14);
/// How long a rotated-out secret still signs, unless the call says.
pub const DEFAULT_GRACE: chrono::Duration = chrono::Duration::hours(24);
pub const MAX_GRACE: chrono::Duration = chrono::Duration::days(7);

/// Every platform event type. The `tenant.*` events and `webhook.test` are
/// emitted today; the others are documented and emitted by the health,
/// alert, isolation and billing services through the same outbox, so an
/// endpoint may subscribe to them already.
pub const EVENT_TYPES: &[&str] = &[
    "tenant.provisioned",
    "tenant.suspended",
    "tenant.reactivated",
    "tenant.terminated",
    "tenant.plan_changed",
    "tenant.limits_changed",
    "tenant.key_rotated",
    "tenant.deleted",
    "health.critical",
    "health.recovered",
    "alert.created",
    "alert.resolved",
    "isolation.migration_started",
    "isolation.migration_completed",
    "isolation.migration_failed",
    "billing.payment_failed",
    "billing.subscription_updated",
    "billing.synced",
    "webhook.test",
];

/// The inbound providers, as their routes and settings name them.
pub const PROVIDERS: &[&str] = &[
    "stripe",
    "generic",
    "shopify",
    "paypal",
    "braintree",
    "github",
];

/// How long a replaced provider secret keeps verifying (Shopify takes up
/// to an hour to switch to a new one).
pub const PROVIDER_SECRET_GRACE: chrono::Duration = chrono::Duration::hours(1);

/// A provider signing secret as configured: 8 to 500 characters.
pub fn provider_secret(field: &str, raw: &str) -> Result<String, FieldViolation> {
    let len = raw.chars().count();
    if !(8..=500).contains(&len) || raw.trim() != raw {
        return Err(violation(
            field,
            "must be 8 to 500 characters without surrounding spaces",
        ));
    }
    Ok(raw.to_owned())
}

/// An endpoint URL: absolute http(s), a host, no credentials, no fragment.
/// Whether its host may be reached is the SSRF guard's question.
pub fn url(raw: &str) -> Result<url::Url, FieldViolation> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(violation("url", "is required"));
    }
    if raw.len() > MAX_URL {
        return Err(violation(
            "url",
            format!("must be at most {MAX_URL} characters"),
        ));
    }
    let parsed =
        url::Url::parse(raw).map_err(|err| violation("url", format!("is not a URL: {err}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(violation("url", "must be an http or https URL"));
    }
    if parsed.host().is_none() {
        return Err(violation("url", "must name a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(violation("url", "must not contain credentials"));
    }
    if parsed.fragment().is_some() {
        return Err(violation("url", "must not have a fragment"));
    }
    Ok(parsed)
}

pub fn description(raw: &str) -> Result<String, FieldViolation> {
    let trimmed = raw.trim();
    if trimmed.chars().count() > MAX_DESCRIPTION {
        return Err(violation(
            "description",
            format!("must be at most {MAX_DESCRIPTION} characters"),
        ));
    }
    Ok(trimmed.to_owned())
}

/// An endpoint's event filter: known types, `family.*` wildcards or `*`;
/// duplicates dropped, order kept.
pub fn event_types(raw: &[String]) -> Result<Vec<String>, FieldViolation> {
    if raw.len() > MAX_EVENT_TYPES {
        return Err(violation(
            "eventTypes",
            format!("at most {MAX_EVENT_TYPES} entries"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for (i, pattern) in raw.iter().enumerate() {
        let pattern = pattern.trim();
        let known = pattern == "*"
            || EVENT_TYPES.contains(&pattern)
            || pattern.strip_suffix(".*").is_some_and(|family| {
                EVENT_TYPES
                    .iter()
                    .any(|t| t.split_once('.').is_some_and(|(f, _)| f == family))
            });
        if !known {
            return Err(violation(
                &format!("eventTypes[{i}]"),
                format!(
                    "unknown event type {pattern:?}; one of {}, a family wildcard such as \"tenant.*\", or \"*\"",
                    EVENT_TYPES.join(", ")
                ),
            ));
        }
        if !out.iter().any(|p| p == pattern) {
            out.push(pattern.to_owned());
        }
    }
    Ok(out)
}

/// Whether `patterns` take `event_type`: the rule the outbox applies in
/// SQL (`tenlyr_event_matches`), spelled out for the tests.
#[cfg(test)]
fn matches(patterns: &[String], event_type: &str) -> bool {
    patterns.is_empty()
        || patterns.iter().any(|p| {
            p == "*"
                || p == event_type
                || p.strip_suffix('*')
                    .is_some_and(|prefix| prefix.ends_with('.') && event_type.starts_with(prefix))
        })
}

/// A new signing secret: `whsec_` + base64 of 32 random bytes.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// A platform event id: `evt_` + a ULID (a UUIDv7 in Crockford base32,
/// so ids sort by creation time like the docs' `evt_01HZ…`).
pub fn new_event_id() -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut n = uuid::Uuid::now_v7().as_u128();
    let mut out = [0u8; 26];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n & 31) as usize];
        n >>= 5;
    }
    format!("evt_{}", std::str::from_utf8(&out).expect("ASCII"))
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, key));
    for part in parts {
        ctx.update(part);
    }
    ctx.sign()
}

/// `Tenlyr-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]`: HMAC-SHA256 keyed
/// with each whole secret string over `"<t>.<body>"`, as the docs'
/// `verifySignature` snippet and Stripe's libraries compute it. During a
/// rotation `secrets` is `[old, new]`: the snippet keeps the last `v1`, so
/// the new secret's signature comes last.
pub fn tenlyr_signature(secrets: &[&str], t: i64, body: &[u8]) -> String {
    let t_text = t.to_string();
    let mut out = format!("t={t_text}");
    for secret in secrets {
        let tag = hmac_sha256(secret.as_bytes(), &[t_text.as_bytes(), b".", body]);
        out.push_str(",v1=");
        for b in tag.as_ref() {
            out.push_str(&format!("{b:02x}"));
        }
    }
    out
}

/// Standard Webhooks `webhook-signature`: `v1,<base64>` per secret,
/// space-separated, HMAC-SHA256 keyed with the base64-decoded bytes after
/// `whsec_` over `"<msg id>.<t>.<body>"`.
pub fn standard_signature(secrets: &[&str], msg_id: &str, t: i64, body: &[u8]) -> String {
    let t_text = t.to_string();
    let engine = base64::engine::general_purpose::STANDARD;
    secrets
        .iter()
        .map(|secret| {
            let raw = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
            let key = engine
                .decode(raw)
                .unwrap_or_else(|_| raw.as_bytes().to_vec());
            let tag = hmac_sha256(
                &key,
                &[msg_id.as_bytes(), b".", t_text.as_bytes(), b".", body],
            );
            format!("v1,{}", engine.encode(tag.as_ref()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Verifies a Stripe-style signature header (`t=<unix>,v1=<hex>[,v1=…]`,
/// other schemes ignored) over the exact raw body: HMAC-SHA256 keyed with
/// the whole secret string over `"<t>.<body>"`, any `v1` matching, in
/// constant time, `t` within `tolerance_secs` of `now`.
pub fn verify_stripe_signature(
    header: &str,
    body: &[u8],
    secret: &str,
    now: i64,
    tolerance_secs: i64,
) -> Result<(), &'static str> {
    let mut t: Option<&str> = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v),
            Some(("v1", v)) => signatures.push(v),
            _ => {}
        }
    }
    let t_text = t.ok_or("no timestamp in the signature header")?;
    let at: i64 = t_text
        .parse()
        .map_err(|_| "bad timestamp in the signature header")?;
    if (now - at).abs() > tolerance_secs {
        return Err("signature timestamp outside the tolerance");
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let signed = [t_text.as_bytes(), b".", body].concat();
    let ok = signatures
        .iter()
        .any(|hex| decode_hex(hex).is_some_and(|tag| hmac::verify(&key, &signed, &tag).is_ok()));
    if ok {
        Ok(())
    } else {
        Err("no matching v1 signature")
    }
}

/// Lower- or upper-case hex to bytes; `None` unless every pair is hex.
pub fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The delay before each attempt (Standard Webhooks' schedule, cut to stay
/// within 72 hours): attempt 1 at once, attempt 10 about 71.6 h later.
pub const SCHEDULE: [Duration; 10] = [
    Duration::ZERO,
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(14 * 3600),
    Duration::from_secs(20 * 3600),
    Duration::from_secs(20 * 3600),
];
pub const MAX_ATTEMPTS: i32 = SCHEDULE.len() as i32;
/// No attempt is made later than this after the event.
pub const GIVE_UP_AFTER: chrono::Duration = chrono::Duration::hours(72);

/// What one attempt's answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx.
    Delivered,
    /// 410: the endpoint is gone; it is disabled.
    Gone,
    /// Anything else (3xx too: redirects are not followed), or no answer.
    Failed,
}

pub fn verdict(status: Option<u16>) -> Verdict {
    match status {
        Some(200..=299) => Verdict::Delivered,
        Some(410) => Verdict::Gone,
        _ => Verdict::Failed,
    }
}

/// After failed attempt number `attempt` (1-based): the delay before the
/// next, or `None` when none is left. ±20 % jitter (`jitter` in `[0, 1)`);
/// a `Retry-After` (429/503) is honoured, clamped to [step, 2 × step].
pub fn retry_delay(attempt: i32, jitter: f64, retry_after: Option<Duration>) -> Option<Duration> {
    let step = *SCHEDULE.get(usize::try_from(attempt).ok()?)?;
    Some(match retry_after {
        Some(wanted) => wanted.clamp(step, step * 2),
        None => step.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0)),
    })
}

/// The circuit breaker opens at ≥ 70 % failures over its window, once the
/// window holds at least this many attempts.
pub const BREAKER_MIN_ATTEMPTS: i64 = 10;
pub const BREAKER_WINDOW: chrono::Duration = chrono::Duration::minutes(5);
/// How long an open breaker waits before its half-open probe.
pub const BREAKER_OPEN_FOR: chrono::Duration = chrono::Duration::seconds(30);

pub fn breaker_opens(attempts: i64, failures: i64) -> bool {
    attempts >= BREAKER_MIN_ATTEMPTS && failures * 10 >= attempts * 7
}

/// Why the SSRF guard refuses an address, or `None` if it may be reached
/// (DESIGN.md §8). IPv4-mapped and -compatible IPv6 forms are judged as
/// the IPv4 address they carry.
pub fn refused_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return refused_v4(v4).map(|_| "an IPv4-mapped form of a refused address");
            }
            refused_v6(v6)
        }
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip == Ipv4Addr::new(169, 254, 169, 254) => "a cloud metadata address",
        (0, ..) => "an unspecified or \"this network\" address",
        (10, ..) | (172, 16..=31, _) | (192, 168, _) => "a private address",
        (127, ..) => "a loopback address",
        (169, 254, _) => "a link-local address",
        (100, 64..=127, _) => "a carrier-grade NAT address",
        (192, 0, 0) => "an IETF protocol assignment",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation address",
        (198, 18..=19, _) => "a benchmarking address",
        (224..=239, ..) => "a multicast address",
        (240..=255, ..) => "a reserved address",
        _ => return None,
    })
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    Some(match s {
        _ if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) => "a cloud metadata address",
        _ if ip.is_unspecified() => "an unspecified address",
        _ if ip.is_loopback() => "a loopback address",
        [0, 0, 0, 0, 0, 0, _, _] => "an IPv4-compatible form of an address",
        [0x64, 0xff9b, ..] => "a NAT64 form of an address",
        [0x100, 0, 0, 0, ..] => "a discard-only address",
        [0x2001, 0xdb8, ..] => "a documentation address",
        [0x2001, 0..=0x1ff, ..] => "an IETF protocol assignment",
        [0x2002, ..] => "a 6to4 form of an address",
        [x, ..] if x & 0xfe00 == 0xfc00 => "a private (unique local) address",
        [x, ..] if x & 0xffc0 == 0xfe80 => "a link-local address",
        [x, ..] if x & 0xffc0 == 0xfec0 => "a site-local address",
        [x, ..] if x & 0xff00 == 0xff00 => "a multicast address",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_absolute_http_without_credentials() {
        assert!(url("https://example.com/hooks").is_ok());
        assert!(url("http://203.0.113.5:8080/x?y=1").is_ok());
        for bad in [
            "",
            "example.com/x",
            "ftp://example.com/",
            "file:///etc/passwd",
            "https://user:pw@example.com/",
            "https://user@example.com/",
            "https://example.com/#frag",
            "javascript:alert(1)",
        ] {
            let err = url(bad).unwrap_err();
            assert_eq!(err.field, "url", "{bad}");
        }
        assert!(url(&format!("https://e.com/{}", "a".repeat(MAX_URL))).is_err());
    }

    #[test]
    fn event_filters_take_known_types_and_family_wildcards() {
        let ok = event_types(&[
            "tenant.*".into(),
            "health.critical".into(),
            "tenant.*".into(),
        ])
        .unwrap();
        assert_eq!(ok, ["tenant.*", "health.critical"]);
        assert!(event_types(&["*".into()]).is_ok());
        let err = event_types(&["tenant.created".into()]).unwrap_err();
        assert_eq!(err.field, "eventTypes[0]");
        assert!(event_types(&["nope.*".into()]).is_err());
        assert!(event_types(&["tenant*".into()]).is_err());

        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(matches(&[], "tenant.deleted"));
        assert!(matches(&p(&["tenant.*"]), "tenant.deleted"));
        assert!(!matches(&p(&["tenant.*"]), "health.critical"));
        assert!(matches(&p(&["*"]), "health.critical"));
        assert!(matches(&p(&["health.critical"]), "health.critical"));
        assert!(!matches(&p(&["health.critical"]), "health.recovered"));
    }

    #[test]
    fn ids_and_secrets_have_their_documented_shapes() {
        let id = new_event_id();
        assert!(id.starts_with("evt_0") && id.len() == 30, "{id}");
        std::thread::sleep(Duration::from_millis(2));
        assert!(new_event_id() > id, "ids sort by time");
        let secret = new_secret();
        let raw = secret.strip_prefix(SECRET_PREFIX).unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(raw)
                .unwrap()
                .len(),
            32
        );
    }

    #[test]
    fn signatures_match_known_answers() {
        // Standard Webhooks' published test vector.
        let sig = standard_signature(
            &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        // HMAC-SHA256("secret", "1.body"), as `openssl dgst -hmac` gives it.
        let header = tenlyr_signature(&["old", "new"], 1, b"body");
        let parts: Vec<&str> = header.split(',').collect();
        assert_eq!(parts[0], "t=1");
        assert_eq!(parts.len(), 3);
        assert_eq!(
            parts[2],
            format!(
                "v1={}",
                hmac_sha256(b"new", &[b"1.body"])
                    .as_ref()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            )
        );
    }

    #[test]
    fn stripe_signatures_verify_over_the_raw_body_within_the_tolerance() {
        let header = tenlyr_signature(&["whsec_other", "whsec_x"], 1_000, b"{}");
        let header = format!("{header},v0=deadbeef");
        assert_eq!(
            verify_stripe_signature(&header, b"{}", "whsec_x", 1_100, 300),
            Ok(())
        );
        assert_eq!(
            verify_stripe_signature(&header, b"{}", "whsec_other", 1_100, 300),
            Ok(())
        );
        assert!(verify_stripe_signature(&header, b"{ }", "whsec_x", 1_100, 300).is_err());
        assert!(verify_stripe_signature(&header, b"{}", "whsec_y", 1_100, 300).is_err());
        assert!(verify_stripe_signature(&header, b"{}", "whsec_x", 1_400, 300).is_err());
        assert!(verify_stripe_signature("v1=00", b"{}", "whsec_x", 1_100, 300).is_err());
        assert!(verify_stripe_signature("t=1000,v1=zz", b"{}", "whsec_x", 1_100, 300).is_err());
    }

    #[test]
    fn the_schedule_spans_under_72_hours_and_honours_retry_after() {
        let total: Duration = SCHEDULE.iter().sum();
        assert!(total < Duration::from_secs(72 * 3600));
        assert_eq!(retry_delay(1, 0.5, None), Some(Duration::from_secs(5)));
        assert_eq!(retry_delay(2, 0.5, None), Some(Duration::from_secs(300)));
        assert_eq!(retry_delay(9, 0.5, None), Some(Duration::from_secs(72_000)));
        assert_eq!(retry_delay(10, 0.5, None), None);
        assert_eq!(retry_delay(1, 0.0, None), Some(Duration::from_secs(4)));
        // Retry-After within [step, 2 × step].
        let ra = |s| Some(Duration::from_secs(s));
        assert_eq!(retry_delay(1, 0.5, ra(1)), ra(5));
        assert_eq!(retry_delay(1, 0.5, ra(7)), ra(7));
        assert_eq!(retry_delay(1, 0.5, ra(3600)), ra(10));
        assert_eq!(verdict(Some(204)), Verdict::Delivered);
        assert_eq!(verdict(Some(301)), Verdict::Failed);
        assert_eq!(verdict(Some(410)), Verdict::Gone);
        assert_eq!(verdict(None), Verdict::Failed);
    }

    #[test]
    fn the_breaker_needs_enough_attempts_and_70_percent_failures() {
        assert!(!breaker_opens(9, 9));
        assert!(breaker_opens(10, 7));
        assert!(!breaker_opens(10, 6));
        assert!(breaker_opens(100, 70));
    }

    #[test]
    fn the_ssrf_guard_refuses_internal_addresses_in_every_form() {
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
        ] {
            let ip: IpAddr = refused.parse().unwrap();
            assert!(refused_address(ip).is_some(), "{refused} should be refused");
        }
        for allowed in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "172.32.0.1"] {
            let ip: IpAddr = allowed.parse().unwrap();
            assert_eq!(refused_address(ip), None, "{allowed}");
        }
        assert_eq!(
            refused_address("169.254.169.254".parse().unwrap()),
            Some("a cloud metadata address")
        );
    }
}
