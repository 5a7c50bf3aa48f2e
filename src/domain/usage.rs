//! Usage metering: metrics, the validation of tracked events, and the
//! calendar arithmetic of billing periods and rollup buckets.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use super::tenant::{PlanLimits, violation};
use crate::error::FieldViolation;

/// How far back an event's `timestamp` may lie. Idempotency keys are kept
/// longer than this ([`IDEMPOTENCY_RETENTION`]), so any event that is still
/// accepted is also still deduplicated.
pub const LATE_WINDOW: Duration = Duration::hours(24);
/// Clock skew tolerated for timestamps "in the future".
pub const FUTURE_SKEW: Duration = Duration::minutes(5);
/// How long an idempotency key is remembered, counted from its event's
/// timestamp. Timestamps are at most [`LATE_WINDOW`] old when accepted, so
/// a key is remembered at least 24 hours after its event was sent.
pub const IDEMPOTENCY_RETENTION: Duration = Duration::hours(48);
/// Events per TrackBatch call.
pub const MAX_BATCH: usize = 1000;
/// The largest value one event may carry.
pub const MAX_VALUE: f64 = 1e9;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    ApiCall,
    StorageGb,
    Seats,
    Compute,
}

impl Metric {
    pub const ALL: [Metric; 4] = [
        Metric::ApiCall,
        Metric::StorageGb,
        Metric::Seats,
        Metric::Compute,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApiCall => "api_call",
            Self::StorageGb => "storage_gb",
            Self::Seats => "seats",
            Self::Compute => "compute",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Whether values must be whole numbers (all but `storage_gb`).
    pub fn integral(self) -> bool {
        self != Self::StorageGb
    }

    /// The plan limit on this metric's monthly total, if any.
    pub fn limit(self, limits: &PlanLimits) -> Option<f64> {
        match self {
            Self::ApiCall => limits.api_calls,
            Self::StorageGb => limits.storage_gb,
            Self::Seats => limits.seats,
            Self::Compute => None,
        }
        .map(|l| l as f64)
    }
}

/// One event as a client sent it (Track or one entry of TrackBatch).
#[derive(Debug, Clone, Default)]
pub struct EventInput {
    /// `None` when the metric was missing or unknown.
    pub metric: Option<Metric>,
    pub value: f64,
    pub endpoint: Option<String>,
    pub idempotency_key: Option<String>,
    pub timestamp: Option<DateTime<Utc>>,
    pub status_code: Option<i32>,
}

/// A validated event, ready to be committed.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub metric: Metric,
    pub value: f64,
    pub endpoint: Option<String>,
    pub idempotency_key: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub status_code: Option<i32>,
}

/// Checks one event against the rules of the Metering API. Returns the
/// first violation; its field names the offending JSON field.
pub fn validate(input: EventInput, now: DateTime<Utc>) -> Result<NewEvent, FieldViolation> {
    let metric = input.metric.ok_or_else(|| {
        violation(
            "metric",
            "is required: one of api_call, storage_gb, seats, compute",
        )
    })?;
    let value = input.value;
    if !value.is_finite() || value <= 0.0 {
        return Err(violation("value", "must be greater than 0"));
    }
    if metric.integral() && (value.fract() != 0.0 || value < 1.0) {
        return Err(violation(
            "value",
            format!("must be a whole number ≥ 1 for {}", metric.as_str()),
        ));
    }
    if value > MAX_VALUE {
        return Err(violation("value", "must be at most 1000000000"));
    }
    let endpoint = match input.endpoint {
        Some(e) if e.is_empty() => None,
        Some(e) if e.chars().count() > 512 || e.chars().any(char::is_control) => {
            return Err(violation(
                "endpoint",
                "must be at most 512 printable characters",
            ));
        }
        other => other,
    };
    if let Some(key) = &input.idempotency_key {
        let ok = (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(violation(
                "idempotencyKey",
                "must be 1 to 255 printable ASCII characters without spaces",
            ));
        }
    }
    let occurred_at = input.timestamp.unwrap_or(now);
    if occurred_at > now + FUTURE_SKEW {
        return Err(violation("timestamp", "must not be in the future"));
    }
    if occurred_at < now - LATE_WINDOW {
        return Err(violation("timestamp", "must be within the last 24 hours"));
    }
    if let Some(code) = input.status_code
        && !(100..=599).contains(&code)
    {
        return Err(violation(
            "statusCode",
            "must be an HTTP status code (100-599)",
        ));
    }
    Ok(NewEvent {
        metric,
        value,
        endpoint,
        idempotency_key: input.idempotency_key,
        occurred_at,
        status_code: input.status_code,
    })
}

/// Rollup granularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Granularity {
    Hour,
    Day,
    Month,
}

impl Granularity {
    pub const ALL: [Granularity; 3] = [Granularity::Hour, Granularity::Day, Granularity::Month];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.as_str() == s)
    }

    /// The start of the bucket holding `at`, in the tenant's zone: the
    /// local hour (which starts at :30 UTC in Asia/Kolkata, :15 in
    /// Asia/Kathmandu), local midnight for days and months.
    pub fn bucket(self, at: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
        match self {
            // Minutes and seconds past the local hour are cut at the
            // offset in force at `at` (a repeated local hour at a DST
            // change keeps its two buckets apart).
            Self::Hour => {
                let local = at.with_timezone(&tz);
                let past = Duration::minutes(i64::from(local.minute()))
                    + Duration::seconds(i64::from(local.second()))
                    + Duration::nanoseconds(i64::from(local.nanosecond()));
                at - past
            }
            Self::Day => local_midnight(at.with_timezone(&tz).date_naive(), tz),
            Self::Month => {
                let local = at.with_timezone(&tz).date_naive();
                local_midnight(local.with_day(1).unwrap_or(local), tz)
            }
        }
    }
}

/// The billing period holding `at`: the calendar month in `tz`, as
/// `[start, end)` instants.
pub fn billing_period(at: DateTime<Utc>, tz: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = Granularity::Month.bucket(at, tz);
    let local = start.with_timezone(&tz).date_naive();
    let next = if local.month() == 12 {
        NaiveDate::from_ymd_opt(local.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(local.year(), local.month() + 1, 1)
    }
    .unwrap_or(local);
    (start, local_midnight(next, tz))
}

/// The first instant of `day` in `tz` (a zone that skips midnight starts
/// the day at the first local time that exists).
fn local_midnight(day: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let mut t = day.and_hms_opt(0, 0, 0).unwrap_or_default();
    for _ in 0..4 {
        if let Some(at) = tz.from_local_datetime(&t).earliest() {
            return at.with_timezone(&Utc);
        }
        t += Duration::minutes(30);
    }
    Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn input(metric: Metric, value: f64) -> EventInput {
        EventInput {
            metric: Some(metric),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn values_follow_the_metric() {
        let now = Utc::now();
        assert!(validate(input(Metric::ApiCall, 1.0), now).is_ok());
        assert!(validate(input(Metric::StorageGb, 0.25), now).is_ok());
        for bad in [0.0, -1.0, 1.5, f64::NAN, 2e9] {
            assert_eq!(
                validate(input(Metric::ApiCall, bad), now)
                    .unwrap_err()
                    .field,
                "value"
            );
        }
        assert_eq!(
            validate(input(Metric::StorageGb, 0.0), now)
                .unwrap_err()
                .field,
            "value"
        );
        let missing = EventInput {
            value: 1.0,
            ..Default::default()
        };
        assert_eq!(validate(missing, now).unwrap_err().field, "metric");
    }

    #[test]
    fn timestamps_keys_and_status_codes_are_bounded() {
        let now = at("2026-03-10T12:00:00Z");
        let with = |f: &dyn Fn(&mut EventInput)| {
            let mut i = input(Metric::ApiCall, 1.0);
            f(&mut i);
            validate(i, now)
        };
        assert_eq!(
            with(&|i| i.timestamp = Some(now + Duration::hours(1)))
                .unwrap_err()
                .field,
            "timestamp"
        );
        assert_eq!(
            with(&|i| i.timestamp = Some(now - Duration::hours(25)))
                .unwrap_err()
                .field,
            "timestamp"
        );
        assert!(with(&|i| i.timestamp = Some(now - Duration::hours(23))).is_ok());
        assert_eq!(
            with(&|i| i.idempotency_key = Some("has space".into()))
                .unwrap_err()
                .field,
            "idempotencyKey"
        );
        assert_eq!(
            with(&|i| i.idempotency_key = Some("x".repeat(256)))
                .unwrap_err()
                .field,
            "idempotencyKey"
        );
        assert!(with(&|i| i.idempotency_key = Some("order-42:retry".into())).is_ok());
        assert_eq!(
            with(&|i| i.status_code = Some(42)).unwrap_err().field,
            "statusCode"
        );
        assert!(with(&|i| i.status_code = Some(503)).is_ok());
    }

    #[test]
    fn periods_follow_the_tenant_time_zone() {
        let tokyo: Tz = "Asia/Tokyo".parse().unwrap();
        // 2026-02-28T16:00Z is already March 1st in Tokyo.
        let (start, end) = billing_period(at("2026-02-28T16:00:00Z"), tokyo);
        assert_eq!(start, at("2026-02-28T15:00:00Z"));
        assert_eq!(end, at("2026-03-31T15:00:00Z"));
        let (start, _) = billing_period(at("2026-02-28T14:59:59Z"), tokyo);
        assert_eq!(start, at("2026-01-31T15:00:00Z"));
        let ny: Tz = "America/New_York".parse().unwrap();
        let (start, end) = billing_period(at("2026-12-15T00:00:00Z"), ny);
        assert_eq!(
            (start, end),
            (at("2026-12-01T05:00:00Z"), at("2027-01-01T05:00:00Z"))
        );
        assert_eq!(
            Granularity::Day.bucket(at("2026-03-08T12:30:00Z"), ny),
            at("2026-03-08T05:00:00Z")
        );
        assert_eq!(
            Granularity::Hour.bucket(at("2026-03-08T12:30:05Z"), ny),
            at("2026-03-08T12:00:00Z")
        );
    }

    #[test]
    fn hours_start_on_the_tenant_local_hour() {
        let kolkata: Tz = "Asia/Kolkata".parse().unwrap(); // UTC+5:30
        let kathmandu: Tz = "Asia/Kathmandu".parse().unwrap(); // UTC+5:45
        let utc = Tz::UTC;
        let t = at("2026-06-10T10:20:07.5Z");
        assert_eq!(Granularity::Hour.bucket(t, utc), at("2026-06-10T10:00:00Z"));
        // 15:50:07 in Kolkata: the local hour began at 15:00 = 09:30Z.
        assert_eq!(
            Granularity::Hour.bucket(t, kolkata),
            at("2026-06-10T09:30:00Z")
        );
        // 16:05:07 in Kathmandu: the local hour began at 16:00 = 10:15Z.
        assert_eq!(
            Granularity::Hour.bucket(t, kathmandu),
            at("2026-06-10T10:15:00Z")
        );
        // Just before a local hour boundary stays in the previous hour.
        assert_eq!(
            Granularity::Hour.bucket(at("2026-06-10T10:14:59Z"), kathmandu),
            at("2026-06-10T09:15:00Z")
        );
        // New York's repeated 01:00 hour (DST ends 2026-11-01): two buckets.
        let ny: Tz = "America/New_York".parse().unwrap();
        assert_eq!(
            Granularity::Hour.bucket(at("2026-11-01T05:30:00Z"), ny),
            at("2026-11-01T05:00:00Z")
        );
        assert_eq!(
            Granularity::Hour.bucket(at("2026-11-01T06:30:00Z"), ny),
            at("2026-11-01T06:00:00Z")
        );
    }
}
