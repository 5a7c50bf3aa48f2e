//! Writes the last-activity times that authentication records in memory
//! (`service::keys` for keys, `service::users` for sessions' last-seen
//! times), every 2 s on each replica and once more at shutdown, so
//! authenticating never writes to the database.

use std::{sync::Arc, time::Duration};

use super::{Context, periodic::Tick};
use crate::service::{keys::KeyResolver, users::Users};

/// How often each replica writes what it recorded.
pub const EVERY: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct ActivityFlush(pub Arc<KeyResolver>, pub Users);

impl Tick for ActivityFlush {
    const NAME: &'static str = "activity-flush";

    async fn tick(&self, _ctx: &Context) -> anyhow::Result<()> {
        self.0.flush_activity().await?;
        self.1.flush_seen().await?;
        Ok(())
    }
}
