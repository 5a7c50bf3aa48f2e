//! Tenants: plans, lifecycle and the validation of what clients send.

use std::fmt;

use crate::error::{ApiError, FieldViolation};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Starter,
    Growth,
    Scale,
    Enterprise,
}

/// Monthly limits of a plan; `None` means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct PlanLimits {
    pub api_calls: Option<i64>,
    pub storage_gb: Option<i64>,
    pub seats: Option<i64>,
}

impl PlanLimits {
    /// The limits in force: a tenant's own (enterprise) limits where set,
    /// else its plan's.
    pub fn effective(plan: &str, own: PlanLimits) -> PlanLimits {
        let plan = Plan::parse(plan).map(Plan::limits).unwrap_or_default();
        PlanLimits {
            api_calls: own.api_calls.or(plan.api_calls),
            storage_gb: own.storage_gb.or(plan.storage_gb),
            seats: own.seats.or(plan.seats),
        }
    }
}

/// The largest own limit a tenant may be given: beyond any period's real
/// usage, and exact as a JSON number.
pub const MAX_OWN_LIMIT: i64 = 1 << 50;

impl PlanLimits {
    /// A tenant's own limits as an admin sets them: each absent (none of
    /// its own) or 0 to [`MAX_OWN_LIMIT`]; the fields out of range are
    /// named (wire names).
    pub fn own(
        api_calls: Option<i64>,
        storage_gb: Option<i64>,
        seats: Option<i64>,
    ) -> Result<PlanLimits, Vec<FieldViolation>> {
        let bad: Vec<FieldViolation> = [
            ("apiCalls", api_calls),
            ("storageGb", storage_gb),
            ("seats", seats),
        ]
        .into_iter()
        .filter(|(_, v)| v.is_some_and(|v| !(0..=MAX_OWN_LIMIT).contains(&v)))
        .map(|(field, _)| {
            violation(
                field,
                format!("must be 0 to {MAX_OWN_LIMIT}, or null for none"),
            )
        })
        .collect();
        if !bad.is_empty() {
            return Err(bad);
        }
        Ok(PlanLimits {
            api_calls,
            storage_gb,
            seats,
        })
    }
}

impl Plan {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starter => "starter",
            Self::Growth => "growth",
            Self::Scale => "scale",
            Self::Enterprise => "enterprise",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "starter" => Self::Starter,
            "growth" => Self::Growth,
            "scale" => Self::Scale,
            "enterprise" => Self::Enterprise,
            _ => return None,
        })
    }

    /// Plan limits (docs: starter 1K, growth 100K, scale 1M API calls a
    /// month; enterprise custom per tenant). Storage and seats are ours:
    /// see docs/plans.md.
    pub fn limits(self) -> PlanLimits {
        match self {
            Self::Starter => PlanLimits {
                api_calls: Some(1_000),
                storage_gb: Some(1),
                seats: Some(3),
            },
            Self::Growth => PlanLimits {
                api_calls: Some(100_000),
                storage_gb: Some(50),
                seats: Some(25),
            },
            Self::Scale => PlanLimits {
                api_calls: Some(1_000_000),
                storage_gb: Some(500),
                seats: Some(100),
            },
            Self::Enterprise => PlanLimits::default(),
        }
    }

    /// Price in cents per month (docs: $0, $99, $399, custom).
    pub fn mrr_cents(self) -> i64 {
        match self {
            Self::Starter | Self::Enterprise => 0,
            Self::Growth => 9_900,
            Self::Scale => 39_900,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantStatus {
    Pending,
    Active,
    Suspended,
    Terminated,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Terminated => "terminated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "active" => Self::Active,
            "suspended" => Self::Suspended,
            "terminated" => Self::Terminated,
            _ => return None,
        })
    }
}

impl fmt::Display for TenantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A lifecycle transition requested by an admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Suspend,
    Reactivate,
    Terminate,
}

impl Transition {
    /// The state after the transition, or the 400 the docs ask for.
    pub fn apply(self, from: TenantStatus) -> Result<TenantStatus, ApiError> {
        use TenantStatus::*;
        let precondition = |msg: String| {
            Err(ApiError::new(
                crate::error::ErrorCode::FailedPrecondition,
                msg,
            ))
        };
        match (self, from) {
            (Self::Suspend, Active | Pending) => Ok(Suspended),
            (Self::Suspend, _) => precondition(format!("tenant is already {from}")),
            (Self::Reactivate, Suspended) => Ok(Active),
            (Self::Reactivate, _) => precondition(format!(
                "only a suspended tenant can be reactivated; this one is {from}"
            )),
            (Self::Terminate, Terminated) => {
                precondition("tenant is already terminated".to_owned())
            }
            (Self::Terminate, _) => Ok(Terminated),
        }
    }

    pub fn action(self) -> &'static str {
        match self {
            Self::Suspend => "tenant.suspend",
            Self::Reactivate => "tenant.reactivate",
            Self::Terminate => "tenant.terminate",
        }
    }

    /// The platform event it causes.
    pub fn event(self) -> &'static str {
        match self {
            Self::Suspend => "tenant.suspended",
            Self::Reactivate => "tenant.reactivated",
            Self::Terminate => "tenant.terminated",
        }
    }
}

/// A terminated tenant is read-only until it is deleted.
pub fn ensure_mutable(status: TenantStatus) -> Result<(), ApiError> {
    if status == TenantStatus::Terminated {
        return Err(ApiError::new(
            crate::error::ErrorCode::FailedPrecondition,
            "tenant is terminated",
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolationLevel {
    SharedSchema,
    DedicatedSchema,
    DedicatedDatabase,
}

impl IsolationLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SharedSchema => "shared_schema",
            Self::DedicatedSchema => "dedicated_schema",
            Self::DedicatedDatabase => "dedicated_database",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "shared_schema" => Self::SharedSchema,
            "dedicated_schema" => Self::DedicatedSchema,
            "dedicated_database" => Self::DedicatedDatabase,
            _ => return None,
        })
    }
}

pub const DEFAULT_REGION: &str = "us-east-1";
pub const DEFAULT_TIME_ZONE: &str = "UTC";

pub(crate) fn violation(field: &str, description: impl Into<String>) -> FieldViolation {
    FieldViolation {
        field: field.to_owned(),
        description: description.into(),
    }
}

/// 2–255 characters after trimming; no control characters.
pub fn name(raw: &str) -> Result<String, FieldViolation> {
    let name = raw.trim();
    let len = name.chars().count();
    if !(2..=255).contains(&len) {
        return Err(violation("name", "must be 2 to 255 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(violation("name", "must not contain control characters"));
    }
    Ok(name.to_owned())
}

/// An address of the usual shape, ASCII only (internationalized domains in
/// their punycode form): local part of RFC 5322 atom characters and dots,
/// a domain of LDH labels with a letter-only TLD.
pub fn email(raw: &str) -> Result<String, FieldViolation> {
    let bad = || violation("ownerEmail", "must be a valid email address");
    let email = raw.trim();
    if email.is_empty() || email.len() > 254 || !email.is_ascii() {
        return Err(bad());
    }
    let (local, domain) = email.rsplit_once('@').ok_or_else(bad)?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic()));
    if !local_ok || !domain_ok {
        return Err(bad());
    }
    Ok(format!("{local}@{}", domain.to_ascii_lowercase()))
}

/// Lowercase letters, digits and single hyphens, 2–63 characters.
pub fn slug(raw: &str) -> Result<String, FieldViolation> {
    let ok = (2..=63).contains(&raw.len())
        && raw.split('-').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        });
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(violation(
            "slug",
            "must be 2 to 63 lowercase letters, digits and single hyphens",
        ))
    }
}

/// The slug a name gives when none is chosen: ASCII-folded, lowercase,
/// non-alphanumerics collapsed to single hyphens; `tenant` if nothing is left.
pub fn slug_from_name(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars() {
        let c = fold(c);
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
        if slug.len() >= 48 {
            break;
        }
    }
    let slug = slug.trim_end_matches('-').to_owned();
    if slug.len() < 2 {
        "tenant".to_owned()
    } else {
        slug
    }
}

/// Common Latin letters with diacritics to their base letter.
fn fold(c: char) -> char {
    const FROM: &str = "àáâãäåāèéêëēìíîïīòóôõöøōùúûüūçñýÿßÀÁÂÃÄÅĀÈÉÊËĒÌÍÎÏĪÒÓÔÕÖØŌÙÚÛÜŪÇÑÝ";
    const TO: &str = "aaaaaaaeeeeeiiiiiooooooouuuuucnyysAAAAAAAEEEEEIIIIIOOOOOOOUUUUUCNY";
    FROM.chars()
        .position(|f| f == c)
        .and_then(|i| TO.chars().nth(i))
        .unwrap_or(c)
}

/// An IANA time zone name.
pub fn time_zone(raw: &str) -> Result<String, FieldViolation> {
    raw.parse::<chrono_tz::Tz>()
        .map(|tz| tz.name().to_owned())
        .map_err(|_| {
            violation(
                "timeZone",
                "must be an IANA time zone such as Europe/Berlin",
            )
        })
}

/// A deployment region such as `us-east-1`: lowercase letters, digits and
/// hyphens, 2–32 characters.
pub fn region(raw: &str) -> Result<String, FieldViolation> {
    let ok = (2..=32).contains(&raw.len())
        && raw
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !raw.starts_with('-')
        && !raw.ends_with('-');
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(violation("region", "must look like us-east-1"))
    }
}

/// A key label such as `production`: 1–100 printable characters.
pub fn label(raw: &str) -> Result<String, FieldViolation> {
    let label = raw.trim();
    if label.is_empty() || label.chars().count() > 100 || label.chars().any(char::is_control) {
        return Err(violation("label", "must be 1 to 100 printable characters"));
    }
    Ok(label.to_owned())
}

/// Collects the violations of several checks into one 422.
pub fn all_valid(checks: Vec<Result<(), FieldViolation>>) -> Result<(), ApiError> {
    let violations: Vec<FieldViolation> = checks.into_iter().filter_map(Result::err).collect();
    if violations.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(violations))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_limits_are_zero_or_more_and_name_each_bad_field() {
        assert_eq!(
            PlanLimits::own(Some(5_000_000), None, Some(0)),
            Ok(PlanLimits {
                api_calls: Some(5_000_000),
                storage_gb: None,
                seats: Some(0)
            })
        );
        let bad =
            PlanLimits::own(Some(-1), Some(MAX_OWN_LIMIT + 1), Some(MAX_OWN_LIMIT)).unwrap_err();
        let fields: Vec<&str> = bad.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["apiCalls", "storageGb"]);
        // Own limits win over the plan's; the plan's fill the rest.
        let own = PlanLimits::own(Some(7), None, None).unwrap();
        assert_eq!(
            PlanLimits::effective("growth", own),
            PlanLimits {
                api_calls: Some(7),
                ..Plan::Growth.limits()
            }
        );
    }

    use super::*;

    #[test]
    fn emails() {
        for ok in [
            "jane@acme.com",
            "a.b+tag@sub.example.co",
            "x@xn--bcher-kva.example",
        ] {
            assert!(email(ok).is_ok(), "{ok}");
        }
        assert_eq!(email(" Jane@ACME.Com ").unwrap(), "Jane@acme.com");
        for bad in [
            "",
            "jane",
            "@acme.com",
            "jane@",
            "jane@acme",
            "jane@@acme.com",
            "jané@acme.com",
            "jane@acmé.com",
            "ja\u{200b}ne@acme.com",
            "jane@acme.c0m",
            ".jane@acme.com",
            "ja..ne@acme.com",
            "jane@-acme.com",
            "jane @acme.com",
            "jane@acme.com\u{202e}",
        ] {
            assert!(email(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn slugs() {
        assert_eq!(slug_from_name("Acme Corp"), "acme-corp");
        assert_eq!(slug_from_name("  Café Zürich!! GmbH "), "cafe-zurich-gmbh");
        assert_eq!(slug_from_name("株式会社"), "tenant");
        assert!(slug("acme-payments").is_ok());
        for bad in ["Acme", "a", "acme--x", "-acme", "acme_x", "acme-"] {
            assert!(slug(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn time_zones_and_regions() {
        assert_eq!(time_zone("Europe/Berlin").unwrap(), "Europe/Berlin");
        assert!(time_zone("Mars/Olympus").is_err());
        assert!(region("eu-central-1").is_ok());
        assert!(region("EU CENTRAL").is_err());
    }

    #[test]
    fn lifecycle() {
        use TenantStatus::*;
        assert_eq!(Transition::Suspend.apply(Active).unwrap(), Suspended);
        assert!(Transition::Suspend.apply(Suspended).is_err());
        assert!(Transition::Suspend.apply(Terminated).is_err());
        assert_eq!(Transition::Reactivate.apply(Suspended).unwrap(), Active);
        assert!(Transition::Reactivate.apply(Active).is_err());
        assert_eq!(Transition::Terminate.apply(Suspended).unwrap(), Terminated);
        assert!(Transition::Terminate.apply(Terminated).is_err());
    }

    #[test]
    fn names_and_labels() {
        assert!(name("A").is_err());
        assert!(name(&"x".repeat(256)).is_err());
        assert_eq!(name("  Acme  ").unwrap(), "Acme");
        assert!(label("production").is_ok());
        assert!(label("").is_err());
    }
}
