//! A thin Stripe client (DESIGN.md §11): form-encoded calls to a
//! configurable base URL (`TENLYR_STRIPE_API_BASE`, Stripe's by default;
//! localstripe in tests) with the secret key, each write carrying an
//! `Idempotency-Key` the caller derives from what it writes.

use std::time::Duration;

use serde::Deserialize;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// Network, timeout or 5xx: worth retrying.
    #[error("stripe unavailable: {0}")]
    Unavailable(String),
    /// 4xx: Stripe refused the request.
    #[error("stripe refused ({status}): {message}")]
    Refused { status: u16, message: String },
}

impl StripeError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Refused { status: 404, .. })
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Customer {
    pub id: String,
    #[serde(default)]
    pub deleted: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Subscription {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub metadata: serde_json::Value,
    #[serde(default)]
    pub plan: Option<PlanRef>,
    pub items: Option<ItemList>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PlanRef {
    pub id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ItemList {
    pub data: Vec<Item>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Item {
    pub id: String,
}

impl Subscription {
    pub fn plan_id(&self) -> Option<&str> {
        self.plan.as_ref().map(|p| p.id.as_str())
    }
}

#[derive(Debug, Clone, Deserialize)]
struct List<T> {
    data: Vec<T>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InvoiceItem {
    pub id: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Created {
    #[allow(dead_code)]
    id: String,
}

/// The client; cheap to clone.
#[derive(Clone)]
pub struct Stripe {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl std::fmt::Debug for Stripe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stripe").field("base", &self.base).finish()
    }
}

/// Calls made (reads and writes), for the sync's report and benchmark.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Calls {
    pub reads: u64,
    pub writes: u64,
}

impl Stripe {
    pub fn new(base: &str, key: &str, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .user_agent(concat!("Tenlyr/", env!("CARGO_PKG_VERSION")))
                .build()?,
            base: base.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
        })
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, StripeError> {
        let response = request
            .basic_auth(&self.key, Some(""))
            .send()
            .await
            .map_err(|e| StripeError::Unavailable(e.to_string()))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| StripeError::Unavailable(e.to_string()))?;
        if status >= 500 {
            return Err(StripeError::Unavailable(format!("{status}: {text}")));
        }
        if status >= 400 {
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or(text);
            return Err(StripeError::Refused { status, message });
        }
        serde_json::from_str(&text).map_err(|e| StripeError::Refused {
            status,
            message: format!("unexpected reply: {e}"),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn post(
        &self,
        path: &str,
        idempotency_key: &str,
        form: &[(&str, String)],
    ) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(path))
            .header("Idempotency-Key", idempotency_key)
            .form(form)
    }

    /// The customer of a tenant: the one whose `metadata[tenant_id]` is
    /// this tenant if Stripe has it (a crash between create and save must
    /// not make a second), else a new one.
    pub async fn ensure_customer(
        &self,
        tenant: &str,
        email: &str,
        name: &str,
        calls: &mut Calls,
    ) -> Result<Customer, StripeError> {
        calls.reads += 1;
        let found: List<serde_json::Value> = self
            .send(
                self.http
                    .get(self.url("/v1/customers"))
                    .query(&[("email", email), ("limit", "100")]),
            )
            .await?;
        if let Some(existing) = found.data.iter().find(|c| {
            c["metadata"]["tenant_id"] == tenant && !c["deleted"].as_bool().unwrap_or(false)
        }) {
            return Ok(Customer {
                id: existing["id"].as_str().unwrap_or_default().to_owned(),
                deleted: false,
            });
        }
        calls.writes += 1;
        self.send(self.post(
            "/v1/customers",
            &format!("tenlyr-customer-{tenant}"),
            &[
                ("email", email.to_owned()),
                ("name", name.to_owned()),
                ("metadata[tenant_id]", tenant.to_owned()),
            ],
        ))
        .await
    }

    /// Creates the plan (product and monthly price) if Stripe lacks it.
    pub async fn ensure_plan(
        &self,
        id: &str,
        name: &str,
        cents: i64,
        currency: &str,
        calls: &mut Calls,
    ) -> Result<(), StripeError> {
        calls.reads += 1;
        match self
            .send::<PlanRef>(self.http.get(self.url(&format!("/v1/plans/{id}"))))
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        calls.writes += 1;
        let created = self
            .send::<Created>(self.post(
                "/v1/plans",
                &format!("tenlyr-plan-{id}-{cents}"),
                &[
                    ("id", id.to_owned()),
                    ("amount", cents.to_string()),
                    ("currency", currency.to_owned()),
                    ("interval", "month".to_owned()),
                    ("product[name]", name.to_owned()),
                ],
            ))
            .await;
        match created {
            Ok(_) => Ok(()),
            // Another replica created it meanwhile: fine if it is there now.
            Err(StripeError::Refused { .. }) => {
                calls.reads += 1;
                self.send::<PlanRef>(self.http.get(self.url(&format!("/v1/plans/{id}"))))
                    .await
                    .map(drop)
            }
            Err(e) => Err(e),
        }
    }

    pub async fn subscription(
        &self,
        id: &str,
        calls: &mut Calls,
    ) -> Result<Subscription, StripeError> {
        calls.reads += 1;
        self.send(self.http.get(self.url(&format!("/v1/subscriptions/{id}"))))
            .await
    }

    /// The customer's subscriptions, any status.
    pub async fn subscriptions_of(
        &self,
        customer: &str,
        calls: &mut Calls,
    ) -> Result<Vec<Subscription>, StripeError> {
        calls.reads += 1;
        let found: List<Subscription> = self
            .send(self.http.get(self.url("/v1/subscriptions")).query(&[
                ("customer", customer),
                ("status", "all"),
                ("limit", "100"),
            ]))
            .await?;
        Ok(found.data)
    }

    pub async fn create_subscription(
        &self,
        customer: &str,
        plan: &str,
        tenant: &str,
        calls: &mut Calls,
    ) -> Result<Subscription, StripeError> {
        calls.writes += 1;
        self.send(self.post(
            "/v1/subscriptions",
            &format!("tenlyr-subscription-{tenant}-{plan}"),
            &[
                ("customer", customer.to_owned()),
                ("items[0][plan]", plan.to_owned()),
                ("metadata[tenant_id]", tenant.to_owned()),
            ],
        ))
        .await
    }

    /// Moves the subscription's single item to `plan`.
    pub async fn change_plan(
        &self,
        sub: &Subscription,
        plan: &str,
        calls: &mut Calls,
    ) -> Result<Subscription, StripeError> {
        let item = sub
            .items
            .as_ref()
            .and_then(|i| i.data.first())
            .map(|i| i.id.clone())
            .unwrap_or_default();
        calls.writes += 1;
        self.send(self.post(
            &format!("/v1/subscriptions/{}", sub.id),
            &format!("tenlyr-subscription-{}-{plan}", sub.id),
            &[("items[0][id]", item), ("items[0][plan]", plan.to_owned())],
        ))
        .await
    }

    pub async fn cancel_subscription(
        &self,
        id: &str,
        calls: &mut Calls,
    ) -> Result<Subscription, StripeError> {
        calls.writes += 1;
        self.send(
            self.http
                .delete(self.url(&format!("/v1/subscriptions/{id}"))),
        )
        .await
    }

    /// A usage charge as an invoice item (added to the next invoice).
    pub async fn add_invoice_item(
        &self,
        customer: &str,
        cents: i64,
        currency: &str,
        description: &str,
        idempotency_key: &str,
        calls: &mut Calls,
    ) -> Result<InvoiceItem, StripeError> {
        calls.writes += 1;
        self.send(self.post(
            "/v1/invoiceitems",
            idempotency_key,
            &[
                ("customer", customer.to_owned()),
                ("amount", cents.to_string()),
                ("currency", currency.to_owned()),
                ("description", description.to_owned()),
                ("metadata[tenlyr_key]", idempotency_key.to_owned()),
            ],
        ))
        .await
    }

    /// A billing-portal session for the customer: its URL.
    pub async fn portal_session(
        &self,
        customer: &str,
        return_url: &str,
    ) -> Result<String, StripeError> {
        #[derive(Deserialize)]
        struct Session {
            url: String,
        }
        let session: Session = self
            .send(
                self.http
                    .post(self.url("/v1/billing_portal/sessions"))
                    .form(&[("customer", customer), ("return_url", return_url)]),
            )
            .await?;
        Ok(session.url)
    }

    /// The customer's invoice item created with this key, if any.
    pub async fn find_invoice_item(
        &self,
        customer: &str,
        key: &str,
        calls: &mut Calls,
    ) -> Result<Option<InvoiceItem>, StripeError> {
        calls.reads += 1;
        let found: List<serde_json::Value> = self
            .send(
                self.http
                    .get(self.url("/v1/invoiceitems"))
                    .query(&[("customer", customer), ("limit", "100")]),
            )
            .await?;
        Ok(found
            .data
            .iter()
            .find(|i| i["metadata"]["tenlyr_key"] == key)
            .and_then(|i| i["id"].as_str())
            .map(|id| InvoiceItem { id: id.to_owned() }))
    }
}
