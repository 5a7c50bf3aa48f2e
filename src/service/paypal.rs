//! PayPal webhook verification, offline (no call to PayPal's verify API):
//! the `PAYPAL-CERT-URL` certificate is fetched only from an allow-listed
//! host, chained to a trust anchor, cached, and its RSA key checks the
//! transmission signature (RSA-SHA256, PKCS#1 v1.5) over
//! `<id>|<time>|<webhook id>|<crc32(body)>` (`domain::inbound`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::HeaderMap;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime, pem::PemObject};

use super::outbound::Outbound;
use crate::domain::inbound::{self as rules, Rejection};

/// How long a fetched certificate chain is used before it is fetched again.
const CERT_TTL: Duration = Duration::from_secs(3600);
/// Largest certificate document read.
const MAX_CERT_BYTES: usize = 64 * 1024;
/// A URL whose fetch failed is not fetched again for this long (a flood
/// of forged webhooks cannot turn into a flood of fetches).
const FAILED_FETCH_TTL: Duration = Duration::from_secs(30);
/// The name PayPal's signing certificate is issued for, as PayPal's SDKs
/// check it.
pub const CERT_SUBJECT: &str = "messageverificationcerts.paypal.com";

/// Where certificates may come from and what they must chain to.
#[derive(Debug, Clone)]
pub struct PaypalConfig {
    /// Host patterns (`*.paypal.com`), or whole origins for tests.
    pub cert_hosts: Vec<String>,
    /// PEM trust anchors; `None`: the system's roots.
    pub ca_pem: Option<Vec<u8>>,
}

/// Fetched chains by URL, leaf first (`None`: the fetch failed), with when.
type CertCache = Mutex<HashMap<String, (Instant, Option<Arc<Vec<CertificateDer<'static>>>>)>>;

#[derive(Clone)]
pub struct PaypalVerifier {
    hosts: Arc<[String]>,
    anchors: Arc<[TrustAnchor<'static>]>,
    http: Outbound,
    certs: Arc<CertCache>,
}

impl std::fmt::Debug for PaypalVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaypalVerifier")
            .field("hosts", &self.hosts)
            .field("anchors", &self.anchors.len())
            .finish_non_exhaustive()
    }
}

fn anchors(pem: Option<&[u8]>) -> anyhow::Result<Vec<TrustAnchor<'static>>> {
    let ders: Vec<CertificateDer<'static>> = match pem {
        Some(pem) => CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>()?,
        None => rustls_native_certs::load_native_certs().certs,
    };
    Ok(ders
        .iter()
        .filter_map(|der| {
            webpki::anchor_from_trusted_cert(der)
                .ok()
                .map(|a| a.to_owned())
        })
        .collect())
}

impl PaypalVerifier {
    pub fn new(config: &PaypalConfig, http: Outbound) -> anyhow::Result<Self> {
        let anchors = anchors(config.ca_pem.as_deref())?;
        if config.ca_pem.is_some() && anchors.is_empty() {
            anyhow::bail!("the PayPal CA file holds no usable certificate");
        }
        Ok(Self {
            hosts: config.cert_hosts.clone().into(),
            anchors: anchors.into(),
            http,
            certs: Arc::default(),
        })
    }

    /// Verifies a PayPal webhook for `webhook_id` (the id PayPal gave the
    /// tenant's webhook). A certificate URL off the allow-list, a chain
    /// that does not verify, or a signature that does not match is an
    /// invalid signature.
    pub async fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        webhook_id: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), Rejection> {
        let t = rules::paypal_transmission(headers, body, webhook_id)?;
        if !rules::paypal_cert_url_allowed(&t.cert_url, &self.hosts) {
            tracing::debug!(url = %t.cert_url, "PayPal certificate URL not allowed");
            return Err(Rejection::InvalidSignature);
        }
        let chain = self
            .chain(&t.cert_url)
            .await
            .ok_or(Rejection::InvalidSignature)?;
        let (leaf, intermediates) = chain.split_first().ok_or(Rejection::InvalidSignature)?;
        let cert =
            webpki::EndEntityCert::try_from(leaf).map_err(|_| Rejection::InvalidSignature)?;
        let at = UnixTime::since_unix_epoch(Duration::from_secs(now.timestamp().max(0) as u64));
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            intermediates,
            at,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|err| {
            tracing::debug!(error = %err, "PayPal certificate chain refused");
            Rejection::InvalidSignature
        })?;
        let subject = rustls_pki_types::ServerName::try_from(CERT_SUBJECT).expect("a DNS name");
        cert.verify_is_valid_for_subject_name(&subject)
            .map_err(|_| Rejection::InvalidSignature)?;
        cert.verify_signature(
            webpki::ring::RSA_PKCS1_2048_8192_SHA256,
            t.message.as_bytes(),
            &t.signature,
        )
        .map_err(|_| Rejection::InvalidSignature)
    }

    /// The certificate chain at `url` (leaf first), from the cache or
    /// fetched through the SSRF-guarded client; `None` when it cannot be
    /// had (not cached: the next webhook tries again).
    async fn chain(&self, url: &str) -> Option<Arc<Vec<CertificateDer<'static>>>> {
        if let Some((at, chain)) = self.certs.lock().expect("cert cache").get(url) {
            let ttl = if chain.is_some() {
                CERT_TTL
            } else {
                FAILED_FETCH_TTL
            };
            if at.elapsed() < ttl {
                return chain.clone();
            }
        }
        let chain = match self.http.get(url, MAX_CERT_BYTES).await {
            Ok(pem) => CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .ok()
                .filter(|chain| !chain.is_empty())
                .map(Arc::new),
            Err(err) => {
                tracing::warn!(url, error = %err, "fetching a PayPal certificate failed");
                None
            }
        };
        let mut certs = self.certs.lock().expect("cert cache");
        if certs.len() > 100 {
            certs.clear();
        }
        certs.insert(url.to_owned(), (Instant::now(), chain.clone()));
        chain
    }
}
