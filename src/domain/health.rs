//! Health, SLA risk and throttling rules (DESIGN.md §9, docs/health.md).

use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};

use super::{tenant::violation, usage::Metric};
use crate::error::FieldViolation;

/// A status code that counts as an error: 500 or more.
pub fn is_error(status_code: i32) -> bool {
    status_code >= 500
}

/// What a usage event adds to its minute's health counts: (requests,
/// errors). An event with a status code is one request, an error when the
/// code is. An `api_call` without one — the way the docs' quickstart and
/// middleware track calls — is `value` requests that did not fail. Other
/// events without a status code (storage, seats, compute) are usage only.
pub fn counts(metric: Metric, value: f64, status_code: Option<i32>) -> (i64, i64) {
    match (status_code, metric) {
        (Some(code), _) => (1, i64::from(is_error(code))),
        (None, Metric::ApiCall) => (value.round().max(0.0) as i64, 0),
        (None, _) => (0, 0),
    }
}

/// The minute bucket an event's health counts go to.
pub fn minute(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(chrono::Duration::minutes(1))
        .unwrap_or(at)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Healthy,
    Warning,
    Critical,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Warning => "warning",
            Self::Critical => "critical",
            Self::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "healthy" => Self::Healthy,
            "warning" => Self::Warning,
            "critical" => Self::Critical,
            "unknown" => Self::Unknown,
            _ => return None,
        })
    }
}

/// Requests and errors over one window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub requests: f64,
    pub errors: f64,
}

impl Counts {
    /// Errors as a fraction of requests (0 with none).
    pub fn ratio(self) -> f64 {
        if self.requests > 0.0 {
            self.errors / self.requests
        } else {
            0.0
        }
    }
}

/// The windows a scan reads, each ending with the current minute.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Windows {
    pub last_5m: Counts,
    pub last_30m: Counts,
    pub last_1h: Counts,
    pub last_6h: Counts,
}

/// The longest window: minute counts older than this are not needed.
pub const LONGEST_WINDOW: chrono::Duration = chrono::Duration::hours(6);

/// Below this many requests in the 5-minute window the sample is small:
/// the status is `warning` or `critical` only if at least
/// [`MIN_ERRORS`] requests failed, so one failure among three requests
/// does not make a tenant critical (and healthy again a minute later).
pub const LOW_VOLUME: f64 = 20.0;
pub const MIN_ERRORS: f64 = 5.0;

/// The availability objective the burn rates are measured against.
pub const SLO: f64 = 0.999;

/// What a scan concludes for one tenant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assessment {
    pub status: Status,
    /// Percent of requests with status >= 500, last 5 minutes.
    pub error_rate: f64,
    /// Requests per minute, last 5 minutes.
    pub request_rate: f64,
    pub sla_risk: bool,
    pub low_volume: bool,
}

/// The documented table (> 10 % critical, 3–10 % warning, < 3 % healthy,
/// no data unknown), with the low-volume rule; `slaRisk` when the status
/// is warning or critical, or when the error budget of a 99.9 % objective
/// burns fast (14.4× over both 1 h and 5 min) or steadily (6× over both
/// 6 h and 30 min) — the SRE workbook's multi-window alerts.
pub fn assess(w: Windows) -> Assessment {
    let c = w.last_5m;
    let error_rate = round2(c.ratio() * 100.0);
    let request_rate = round2(c.requests / 5.0);
    let low_volume = c.requests > 0.0 && c.requests < LOW_VOLUME;
    let status = if c.requests == 0.0 {
        Status::Unknown
    } else if low_volume && c.errors < MIN_ERRORS {
        Status::Healthy
    } else if error_rate > 10.0 {
        Status::Critical
    } else if error_rate >= 3.0 {
        Status::Warning
    } else {
        Status::Healthy
    };
    let budget = 1.0 - SLO;
    let burning = |long: Counts, short: Counts, factor: f64| {
        long.errors >= MIN_ERRORS
            && long.ratio() > factor * budget
            && short.ratio() > factor * budget
    };
    let sla_risk = matches!(status, Status::Warning | Status::Critical)
        || burning(w.last_1h, w.last_5m, 14.4)
        || burning(w.last_6h, w.last_30m, 6.0);
    Assessment {
        status,
        error_rate,
        request_rate,
        sla_risk,
        low_volume,
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The largest `limitRpm` a throttle takes (a million a minute).
pub const MAX_LIMIT_RPM: i32 = 1_000_000;

pub fn limit_rpm(raw: i32) -> Result<i32, FieldViolation> {
    if (1..=MAX_LIMIT_RPM).contains(&raw) {
        Ok(raw)
    } else {
        Err(violation(
            "limitRpm",
            format!("must be an integer from 1 to {MAX_LIMIT_RPM}"),
        ))
    }
}

/// GCRA (the generic cell rate algorithm) for `limit_rpm` requests a
/// minute: a burst of `limit_rpm` at once, then one every
/// `60 s / limit_rpm`. State is the theoretical arrival time (`tat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Emission interval, microseconds.
    pub interval_us: i64,
    /// How far ahead of now the TAT may run: `interval × (limit - 1)`.
    pub tolerance_us: i64,
}

/// One decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests that would still pass right now.
    pub remaining: i64,
    /// Refused: when a retry passes. Allowed: when the burst is whole again.
    pub wait: Duration,
    /// The new TAT (store it when allowed).
    pub tat_us: i64,
}

impl Gcra {
    pub fn per_minute(limit_rpm: i32) -> Self {
        let limit = i64::from(limit_rpm.max(1));
        let interval_us = 60_000_000 / limit;
        Self {
            interval_us,
            tolerance_us: interval_us * (limit - 1),
        }
    }

    pub fn decide(self, tat_us: Option<i64>, now_us: i64) -> Decision {
        let tat = tat_us.unwrap_or(now_us).max(now_us);
        let allow_at = tat - self.tolerance_us;
        if allow_at > now_us {
            return Decision {
                allowed: false,
                remaining: 0,
                wait: Duration::from_micros((allow_at - now_us) as u64),
                tat_us: tat,
            };
        }
        let new_tat = tat + self.interval_us;
        let remaining = (now_us - (new_tat - self.tolerance_us)).div_euclid(self.interval_us) + 1;
        Decision {
            allowed: true,
            remaining: remaining.max(0),
            wait: Duration::from_micros((new_tat - now_us) as u64),
            tat_us: new_tat,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(requests: f64, errors: f64) -> Counts {
        Counts { requests, errors }
    }

    fn five(requests: f64, errors: f64) -> Windows {
        Windows {
            last_5m: window(requests, errors),
            last_30m: window(requests, errors),
            last_1h: window(requests, errors),
            last_6h: window(requests, errors),
        }
    }

    #[test]
    fn calls_tracked_without_a_status_code_count_as_requests_that_did_not_fail() {
        assert_eq!(counts(Metric::ApiCall, 1.0, None), (1, 0));
        assert_eq!(counts(Metric::ApiCall, 25.0, None), (25, 0));
        assert_eq!(counts(Metric::ApiCall, 0.0, None), (0, 0));
        assert_eq!(counts(Metric::ApiCall, 1.0, Some(200)), (1, 0));
        assert_eq!(counts(Metric::ApiCall, 1.0, Some(503)), (1, 1));
        assert_eq!(counts(Metric::Compute, 3.0, Some(500)), (1, 1));
        assert_eq!(counts(Metric::StorageGb, 2.5, None), (0, 0));
        assert_eq!(counts(Metric::Seats, 4.0, None), (0, 0));
    }

    #[test]
    fn the_documented_table() {
        assert_eq!(assess(Windows::default()).status, Status::Unknown);
        assert_eq!(assess(five(1000.0, 0.0)).status, Status::Healthy);
        assert_eq!(assess(five(1000.0, 29.0)).status, Status::Healthy);
        assert_eq!(assess(five(1000.0, 30.0)).status, Status::Warning);
        assert_eq!(assess(five(1000.0, 100.0)).status, Status::Warning);
        assert_eq!(assess(five(1000.0, 101.0)).status, Status::Critical);
        let a = assess(five(1000.0, 124.0));
        assert_eq!(a.error_rate, 12.4);
        assert_eq!(a.request_rate, 200.0);
        assert!(a.sla_risk);
        assert!(!a.low_volume);
    }

    #[test]
    fn a_small_sample_needs_enough_errors_to_alarm() {
        let a = assess(five(3.0, 1.0));
        assert_eq!((a.status, a.low_volume), (Status::Healthy, true));
        let a = assess(five(10.0, 5.0));
        assert_eq!((a.status, a.low_volume), (Status::Critical, true));
    }

    #[test]
    fn burn_rates_flag_sla_risk_before_the_status_does() {
        // 2 % errors: healthy by the table, but 20× the budget of 99.9 %.
        let a = assess(five(10_000.0, 200.0));
        assert_eq!(a.status, Status::Healthy);
        assert!(a.sla_risk);
        // 0.7 %: under the fast burn (1.44 %), over the slow one (0.6 %).
        let mut w = five(10_000.0, 70.0);
        assert!(assess(w).sla_risk);
        w.last_30m = window(2000.0, 0.0);
        assert!(!assess(w).sla_risk, "both windows of a pair must burn");
        assert!(!assess(five(10_000.0, 10.0)).sla_risk);
    }

    #[test]
    fn gcra_allows_a_burst_of_the_limit_then_one_per_interval() {
        let g = Gcra::per_minute(60);
        let mut tat = None;
        let now = 1_000_000_000;
        for i in 0..60 {
            let d = g.decide(tat, now);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 59 - i);
            tat = Some(d.tat_us);
        }
        let refused = g.decide(tat, now);
        assert!(!refused.allowed);
        assert_eq!(refused.wait, Duration::from_secs(1));
        // A retry when told passes; one earlier does not.
        assert!(!g.decide(tat, now + 999_999).allowed);
        assert!(g.decide(tat, now + 1_000_000).allowed);
        // After a quiet minute the burst is whole again.
        let d = g.decide(tat, now + 60_000_000);
        assert!(d.allowed);
        assert_eq!(d.remaining, 59);
    }

    #[test]
    fn limits_are_bounded() {
        assert!(limit_rpm(0).is_err());
        assert!(limit_rpm(-5).is_err());
        assert!(limit_rpm(MAX_LIMIT_RPM + 1).is_err());
        assert_eq!(limit_rpm(60).unwrap(), 60);
    }
}
