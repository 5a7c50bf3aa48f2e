//! Isolation migrations: which moves are allowed, their states and phases
//! (DESIGN.md §10). Pure rules; the move itself is `workers::isolation`.

use super::tenant::{IsolationLevel, TenantStatus};

/// A migration's state, as the API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationStatus {
    Pending,
    InProgress,
    Completed,
    Failed,
}

impl MigrationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "in_progress" => Self::InProgress,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            _ => return None,
        })
    }

    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Failed)
    }
}

/// Where a running move is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Queued,
    /// Bulk copy, in chunks; writes go on to the source.
    Copying,
    /// Copying what was written during the bulk copy.
    CatchingUp,
    /// Writes wait while the last rows are copied, verified and the
    /// placement flips.
    Barrier,
    /// The new place is live; the source rows are being deleted.
    Cleaning,
    Done,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Copying => "copying",
            Self::CatchingUp => "catching_up",
            Self::Barrier => "barrier",
            Self::Cleaning => "cleaning",
            Self::Done => "done",
        }
    }
}

/// Why a migration cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("targetLevel is required: dedicated_schema or dedicated_database")]
    MissingTarget,
    #[error(
        "isolation can only be upgraded (shared_schema → dedicated_schema → dedicated_database); \
         a downgrade requires a support ticket"
    )]
    Downgrade,
    #[error("tenant is already at {0}")]
    SameLevel(&'static str),
    #[error("only an active tenant can be migrated; this one is {0}")]
    NotActive(&'static str),
}

/// Whether a tenant at `from` with `status` may move to `to`: upgrades
/// only, and only while active (a suspended tenant is reactivated first; a
/// terminated one is on its way out).
pub fn check_start(
    from: IsolationLevel,
    to: Option<IsolationLevel>,
    status: TenantStatus,
) -> Result<IsolationLevel, StartError> {
    let to = to.ok_or(StartError::MissingTarget)?;
    if to == from {
        return Err(StartError::SameLevel(to.as_str()));
    }
    if rank(to) < rank(from) {
        return Err(StartError::Downgrade);
    }
    if status != TenantStatus::Active {
        return Err(StartError::NotActive(status.as_str()));
    }
    Ok(to)
}

fn rank(level: IsolationLevel) -> u8 {
    match level {
        IsolationLevel::SharedSchema => 0,
        IsolationLevel::DedicatedSchema => 1,
        IsolationLevel::DedicatedDatabase => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use IsolationLevel::*;

    #[test]
    fn only_upgrades_of_active_tenants_start() {
        let active = TenantStatus::Active;
        assert_eq!(
            check_start(SharedSchema, Some(DedicatedSchema), active),
            Ok(DedicatedSchema)
        );
        assert_eq!(
            check_start(SharedSchema, Some(DedicatedDatabase), active),
            Ok(DedicatedDatabase)
        );
        assert_eq!(
            check_start(DedicatedSchema, Some(DedicatedDatabase), active),
            Ok(DedicatedDatabase)
        );
        assert_eq!(
            check_start(DedicatedSchema, Some(SharedSchema), active),
            Err(StartError::Downgrade)
        );
        assert_eq!(
            check_start(SharedSchema, Some(SharedSchema), active),
            Err(StartError::SameLevel("shared_schema"))
        );
        assert_eq!(
            check_start(SharedSchema, None, active),
            Err(StartError::MissingTarget)
        );
        assert_eq!(
            check_start(SharedSchema, Some(DedicatedSchema), TenantStatus::Suspended),
            Err(StartError::NotActive("suspended"))
        );
    }

    #[test]
    fn statuses_round_trip() {
        for s in ["pending", "in_progress", "completed", "failed"] {
            assert_eq!(MigrationStatus::parse(s).unwrap().as_str(), s);
        }
        assert!(MigrationStatus::Failed.is_finished());
        assert!(!MigrationStatus::InProgress.is_finished());
    }
}
