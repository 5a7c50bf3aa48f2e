//! Optional Redis: shared key-lookup cache and cross-replica invalidation
//! (pub/sub). Without `REDIS_URL` the in-process equivalents serve one node.

use anyhow::Context;
use fred::{
    clients::{Client, SubscriberClient},
    prelude::*,
    types::Message,
};
use tokio::sync::broadcast;

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
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let config = Config::from_url(url).context("REDIS_URL is not a valid Redis URL")?;
        let client = Builder::from_config(config).build()?;
        client.init().await.context("connecting to Redis")?;
        Ok(Self { client })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A dedicated connection subscribed to `channel` (resubscribing after
    /// reconnects) and its message stream.
    pub async fn subscribe(
        &self,
        channel: &str,
    ) -> anyhow::Result<(SubscriberClient, broadcast::Receiver<Message>)> {
        let subscriber =
            Builder::from_config(self.client.client_config()).build_subscriber_client()?;
        subscriber
            .init()
            .await
            .context("connecting the Redis subscriber")?;
        let messages = subscriber.message_rx();
        let _resubscribe = subscriber.manage_subscriptions();
        subscriber.subscribe(channel).await?;
        Ok((subscriber, messages))
    }

    pub async fn quit(&self) {
        let _ = self.client.quit().await;
    }
}
