//! The one way Tenlyr sends HTTP to customers' servers (outbound platform
//! events now, forwarded provider webhooks next): a pooled client that
//! never follows redirects, bounds every request by one timeout, keeps the
//! first 4 KiB of the answer, and connects only to addresses the SSRF
//! guard passed (DESIGN.md §8).
//!
//! The guard sits in the client's resolver: a host name is resolved once,
//! every address is checked, and the connection goes to the checked
//! addresses only (no second lookup a DNS-rebinding attacker could
//! answer differently). A URL naming an IP address is checked before the
//! request, as the resolver never sees it.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::HeaderMap;
use ipnet::IpNet;

use crate::{
    domain::webhook::{self, EXCERPT_BYTES},
    error::FieldViolation,
};

/// Which addresses may be reached: everything public, plus the configured
/// `TENLYR_WEBHOOK_ALLOWED_CIDRS` (self-hosting, tests).
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allowed: Vec<IpNet>,
}

impl Guard {
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self { allowed }
    }

    /// `Err(reason)` for an address the guard refuses.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        if self.allowed.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match webhook::refused_address(ip) {
            Some(why) => Err(format!("{ip} is {why}")),
            None => Ok(()),
        }
    }

    /// A URL a customer gives Tenlyr to call (an endpoint, a callback):
    /// valid by `domain::webhook::url` and passed by the guard, or the
    /// violation naming `field` and why.
    pub async fn checked_url(&self, field: &str, raw: &str) -> Result<String, FieldViolation> {
        let url = webhook::url(raw).map_err(|v| FieldViolation {
            field: field.to_owned(),
            description: v.description,
        })?;
        self.check_url(&url).await.map_err(|why| FieldViolation {
            field: field.to_owned(),
            description: format!("refused: {why}"),
        })?;
        Ok(url.to_string())
    }

    /// Resolves the URL's host and checks every address (registration:
    /// one refused address refuses the URL).
    pub async fn check_url(&self, url: &url::Url) -> Result<(), String> {
        let port = url.port_or_known_default().unwrap_or(443);
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check(ip.into()),
            Some(url::Host::Ipv6(ip)) => self.check(ip.into()),
            Some(url::Host::Domain(name)) => {
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name, port))
                    .await
                    .map_err(|err| format!("{name} does not resolve: {err}"))?
                    .collect();
                if addrs.is_empty() {
                    return Err(format!("{name} does not resolve"));
                }
                for addr in addrs {
                    self.check(addr.ip())
                        .map_err(|why| format!("{name} resolves to {why}"))?;
                }
                Ok(())
            }
            None => Err("the URL names no host".into()),
        }
    }
}

/// reqwest's resolver, with the guard applied to what it resolves.
struct GuardedResolver(Arc<Guard>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let passed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|addr| match guard.check(addr.ip()) {
                    Ok(()) => true,
                    Err(why) => {
                        refused.get_or_insert(why);
                        false
                    }
                })
                .collect();
            if passed.is_empty() {
                let why = refused.unwrap_or_else(|| "no address".into());
                return Err(format!("refused by the SSRF guard: {host} resolves to {why}").into());
            }
            Ok(Box::new(passed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// What one request came to.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The HTTP status; `None` when no response came.
    pub status: Option<u16>,
    pub latency: Duration,
    /// Why no (complete) response came.
    pub error: Option<String>,
    /// The first 4 KiB of the body, as text.
    pub excerpt: Option<String>,
    /// The `Retry-After` of a 429 or 503.
    pub retry_after: Option<Duration>,
}

/// The pooled client; cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbound {
    client: reqwest::Client,
    guard: Arc<Guard>,
    timeout: Duration,
}

impl Outbound {
    pub fn new(guard: Guard, timeout: Duration) -> anyhow::Result<Self> {
        let guard = Arc::new(guard);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .dns_resolver(Arc::new(GuardedResolver(guard.clone())))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("Tenlyr-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            guard,
            timeout,
        })
    }

    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// POSTs `body`; never fails, the [`Answer`] says what happened.
    pub async fn post(&self, url: &str, headers: HeaderMap, body: Bytes) -> Answer {
        let started = Instant::now();
        let failed = |error: String| Answer {
            status: None,
            latency: started.elapsed(),
            error: Some(error),
            excerpt: None,
            retry_after: None,
        };
        let parsed = match url::Url::parse(url) {
            Ok(parsed) => parsed,
            Err(err) => return failed(format!("invalid URL: {err}")),
        };
        let literal = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::from(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::from(ip)),
            _ => None,
        };
        if let Some(ip) = literal
            && let Err(why) = self.guard.check(ip)
        {
            return failed(format!("refused by the SSRF guard: {why}"));
        }
        let response = match self
            .client
            .post(parsed)
            .headers(headers)
            .body(body)
            .send()
            .await
        {
            Ok(response) => response,
            Err(err) => return failed(self.describe(&err)),
        };
        let status = response.status().as_u16();
        let retry_after = matches!(status, 429 | 503)
            .then(|| retry_after(response.headers()))
            .flatten();
        let (excerpt, error) = read_excerpt(response).await;
        let error = error.map(|e| self.describe(&e));
        Answer {
            status: Some(status),
            latency: started.elapsed(),
            error,
            excerpt: Some(excerpt),
            retry_after,
        }
    }

    /// GETs a document of at most `max_bytes` (PayPal certificates): the
    /// body of a 200, else why not.
    pub async fn get(&self, url: &str, max_bytes: usize) -> Result<Vec<u8>, String> {
        let parsed = url::Url::parse(url).map_err(|err| format!("invalid URL: {err}"))?;
        if let Some(url::Host::Ipv4(ip)) = parsed.host() {
            self.guard.check(IpAddr::from(ip))?;
        }
        if let Some(url::Host::Ipv6(ip)) = parsed.host() {
            self.guard.check(IpAddr::from(ip))?;
        }
        let mut response = self
            .client
            .get(parsed)
            .send()
            .await
            .map_err(|err| self.describe(&err))?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(format!("HTTP {}", response.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|err| self.describe(&err))? {
            if body.len() + chunk.len() > max_bytes {
                return Err(format!("larger than {max_bytes} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn describe(&self, err: &reqwest::Error) -> String {
        if err.is_timeout() {
            return format!("timed out after {} s", self.timeout.as_secs_f64());
        }
        // The innermost causes say what went wrong (refused, reset, TLS).
        let mut parts = Vec::new();
        let mut source: Option<&dyn std::error::Error> = Some(err);
        while let Some(e) = source {
            let text = e.to_string();
            if !parts.iter().any(|p: &String| p.contains(&text)) {
                parts.push(text);
            }
            source = e.source();
        }
        let described = parts.join(": ");
        described.chars().take(500).collect()
    }
}

/// Up to [`EXCERPT_BYTES`] of the body (lossy UTF-8); the rest is not
/// read. An error while reading is returned beside what was read.
async fn read_excerpt(mut response: reqwest::Response) -> (String, Option<reqwest::Error>) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = EXCERPT_BYTES - buf.len();
                buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if buf.len() >= EXCERPT_BYTES {
                    break;
                }
            }
            Ok(None) => break,
            Err(err) => return (String::from_utf8_lossy(&buf).into_owned(), Some(err)),
        }
    }
    (String::from_utf8_lossy(&buf).into_owned(), None)
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_opens_ranges_the_guard_refuses() {
        let closed = Guard::default();
        assert!(closed.check("127.0.0.1".parse().unwrap()).is_err());
        assert!(closed.check("93.184.216.34".parse().unwrap()).is_ok());
        let open = Guard::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(open.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(open.check("10.0.0.1".parse().unwrap()).is_err());
    }

    #[tokio::test]
    async fn urls_are_checked_by_what_they_resolve_to() {
        let guard = Guard::default();
        let err = guard
            .check_url(&url::Url::parse("http://localhost:1/").unwrap())
            .await
            .unwrap_err();
        assert!(err.contains("loopback"), "{err}");
        let err = guard
            .check_url(&url::Url::parse("http://[::ffff:127.0.0.1]/").unwrap())
            .await
            .unwrap_err();
        assert!(err.contains("IPv4-mapped"), "{err}");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = chrono::Utc::now() + chrono::Duration::seconds(60);
        headers.insert(
            "retry-after",
            later.to_rfc2822().replace("+0000", "GMT").parse().unwrap(),
        );
        let got = retry_after(&headers).unwrap();
        assert!(got > Duration::from_secs(50) && got <= Duration::from_secs(60));
        headers.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }
}
