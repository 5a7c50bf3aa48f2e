//! Optional Redis: shared key-lookup cache and cross-replica invalidation
//! (pub/sub). Without `REDIS_URL` the in-process equivalents serve one node.

use anyhow::Context;
use fred::{clients::Client, prelude::*};

/// The longest any Redis command may take.
pub const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Clone)]
pub struct Redis {
    client: Client,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redis(..)")
    }
}

impl Redis {
    /// Connects; afterwards the client reconnects by itself (100 ms
    /// doubling to 2 s, forever), and while it is disconnected commands
    /// fail at once (callers fall back to Postgres) and never wait more
    /// than [`COMMAND_TIMEOUT`].
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let config = Config::from_url(url).context("REDIS_URL is not a valid Redis URL")?;
        let client = Builder::from_config(config)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .with_performance_config(|c| c.default_command_timeout = COMMAND_TIMEOUT)
            .build()?;
        client.init().await.context("connecting to Redis")?;
        Ok(Self { client })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub async fn quit(&self) {
        let _ = self.client.quit().await;
    }
}
