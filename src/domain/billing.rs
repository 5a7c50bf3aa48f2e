//! Prices, MRR and usage cost (DESIGN.md §11, docs/billing.md). Integer
//! cents everywhere.

use std::str::FromStr;

use super::{
    tenant::{Plan, PlanLimits},
    usage::Metric,
};

/// The currency of every price (as Stripe writes it).
pub const CURRENCY: &str = "usd";

/// The most an admin may set as an enterprise tenant's monthly price
/// ($10,000,000).
pub const MAX_ENTERPRISE_CENTS: i64 = 1_000_000_000;

/// Price of each metric's usage beyond what the plan includes, in cents
/// per unit (decimals allowed: 0.01 is a cent per 100 units).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OveragePrices {
    pub api_call: f64,
    pub storage_gb: f64,
    pub seats: f64,
    pub compute: f64,
}

impl Default for OveragePrices {
    /// 1 ¢ per 100 API calls, 25 ¢ per GB, $5 per seat, 2 ¢ per compute
    /// unit.
    fn default() -> Self {
        Self {
            api_call: 0.01,
            storage_gb: 25.0,
            seats: 500.0,
            compute: 2.0,
        }
    }
}

impl OveragePrices {
    pub fn of(&self, metric: Metric) -> f64 {
        match metric {
            Metric::ApiCall => self.api_call,
            Metric::StorageGb => self.storage_gb,
            Metric::Seats => self.seats,
            Metric::Compute => self.compute,
        }
    }
}

/// `api_call=0.01,storage_gb=25,seats=500,compute=2` (any subset; the rest
/// keep their defaults).
impl FromStr for OveragePrices {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut prices = Self::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected metric=cents"))?;
            let value: f64 = value
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("{part:?}: the price must be a number of cents >= 0"))?;
            match Metric::parse(name.trim()) {
                Some(Metric::ApiCall) => prices.api_call = value,
                Some(Metric::StorageGb) => prices.storage_gb = value,
                Some(Metric::Seats) => prices.seats = value,
                Some(Metric::Compute) => prices.compute = value,
                None => return Err(format!("{name:?} is not a metric")),
            }
        }
        Ok(prices)
    }
}

/// What a plan's price includes each billing period. API calls, storage
/// and seats: the plan's standard limits (a tenant's own higher limit lets
/// it use more, priced as overage); compute: an allowance. Enterprise: the
/// tenant's own limits (none set: all included).
pub fn included(plan: Plan, own: PlanLimits, metric: Metric) -> Option<f64> {
    let limits = match plan {
        Plan::Enterprise => own,
        _ => plan.limits(),
    };
    match metric {
        Metric::ApiCall => limits.api_calls.map(|v| v as f64),
        Metric::StorageGb => limits.storage_gb.map(|v| v as f64),
        Metric::Seats => limits.seats.map(|v| v as f64),
        Metric::Compute => match plan {
            Plan::Starter => Some(0.0),
            Plan::Growth => Some(1_000.0),
            Plan::Scale => Some(10_000.0),
            Plan::Enterprise => None,
        },
    }
}

/// Monthly recurring revenue of a tenant: its plan's price, or for
/// enterprise the price an admin set (0 until then). A terminated tenant
/// pays nothing. Metered charges are not MRR (ChartMogul's definition).
pub fn mrr_cents(plan: Plan, enterprise_price: Option<i64>, terminated: bool) -> i64 {
    if terminated {
        return 0;
    }
    match plan {
        Plan::Enterprise => enterprise_price.unwrap_or(0),
        other => other.mrr_cents(),
    }
}

/// The period's usage beyond what the plan includes, priced: each metric's
/// overage × its unit price, summed, rounded half up to whole cents.
pub fn usage_cost_cents(
    plan: Plan,
    own: PlanLimits,
    used: impl Fn(Metric) -> f64,
    prices: &OveragePrices,
) -> i64 {
    let cents: f64 = Metric::ALL
        .into_iter()
        .map(|m| {
            let over = match included(plan, own, m) {
                Some(included) => (used(m) - included).max(0.0),
                None => 0.0,
            };
            over * prices.of(m)
        })
        .sum();
    (cents + 0.5).floor() as i64
}

/// A billing status. `not_synced`: no Stripe sync yet (or no Stripe
/// configured); `requires_payment_method`: a paid plan whose customer has
/// no payment method yet, so Stripe refused the subscription; the rest as
/// Stripe reports the subscription.
pub const STATUSES: &[&str] = &[
    "not_synced",
    "requires_payment_method",
    "active",
    "trialing",
    "past_due",
    "unpaid",
    "canceled",
    "incomplete",
    "incomplete_expired",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn used(api: f64, storage: f64, seats: f64, compute: f64) -> impl Fn(Metric) -> f64 {
        move |m| match m {
            Metric::ApiCall => api,
            Metric::StorageGb => storage,
            Metric::Seats => seats,
            Metric::Compute => compute,
        }
    }

    #[test]
    fn mrr_is_the_plan_price_or_the_enterprise_contract() {
        assert_eq!(mrr_cents(Plan::Starter, None, false), 0);
        assert_eq!(mrr_cents(Plan::Growth, Some(1), false), 9_900);
        assert_eq!(mrr_cents(Plan::Scale, None, false), 39_900);
        assert_eq!(mrr_cents(Plan::Enterprise, None, false), 0);
        assert_eq!(mrr_cents(Plan::Enterprise, Some(250_000), false), 250_000);
        assert_eq!(mrr_cents(Plan::Scale, None, true), 0);
    }

    #[test]
    fn usage_cost_prices_what_the_plan_does_not_include() {
        let p = OveragePrices::default();
        let none = PlanLimits::default();
        // Within the plan: nothing.
        assert_eq!(
            usage_cost_cents(Plan::Growth, none, used(100_000.0, 50.0, 25.0, 1_000.0), &p),
            0
        );
        // Compute beyond the allowance: 500 × 2 ¢.
        assert_eq!(
            usage_cost_cents(Plan::Growth, none, used(0.0, 0.0, 0.0, 1_500.0), &p),
            1_000
        );
        // A growth tenant with its own higher API limit used 150,000: 50,000 × 0.01 ¢.
        assert_eq!(
            usage_cost_cents(Plan::Growth, none, used(150_000.0, 0.0, 0.0, 0.0), &p),
            500
        );
        // Half a cent rounds up.
        assert_eq!(
            usage_cost_cents(Plan::Starter, none, used(1_050.0, 0.0, 0.0, 0.0), &p),
            1
        );
        // Enterprise with no limits includes everything.
        assert_eq!(
            usage_cost_cents(Plan::Enterprise, none, used(1e9, 1e4, 1e4, 1e6), &p),
            0
        );
        let own = PlanLimits {
            api_calls: Some(1_000_000),
            storage_gb: None,
            seats: Some(10),
        };
        assert_eq!(
            usage_cost_cents(Plan::Enterprise, own, used(0.0, 0.0, 12.0, 0.0), &p),
            1_000
        );
    }

    #[test]
    fn prices_parse_from_config() {
        let p: OveragePrices = "api_call=0.02, compute=3".parse().unwrap();
        assert_eq!(p.api_call, 0.02);
        assert_eq!(p.compute, 3.0);
        assert_eq!(p.seats, 500.0);
        assert!("api_call=-1".parse::<OveragePrices>().is_err());
        assert!("bogus=1".parse::<OveragePrices>().is_err());
        assert!("api_call".parse::<OveragePrices>().is_err());
    }
}
