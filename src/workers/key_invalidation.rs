//! Hears other replicas' key invalidations (Redis pub/sub) and applies
//! them to this replica's key cache.
//!
//! A subscription that cannot be trusted is never kept quietly: while the
//! subscriber is not subscribed — Redis unreachable at start, the
//! connection dropped, the server killed our client — the key cache keeps
//! lookups for at most `UNSUBSCRIBED_TTL` (3 s) instead of 60 s, and every
//! change of state (down, or subscribed again) empties it, since
//! invalidations may have been missed in between. `/readyz` reports the
//! state. The subscriber reconnects with backoff (0.5 s doubling to 5 s).

use std::{sync::Arc, time::Duration};

use fred::{
    clients::SubscriberClient,
    interfaces::{ClientLike, EventInterface, PubsubInterface},
    prelude::Builder,
};
use tokio_util::sync::CancellationToken;

use super::{Context, Worker};
use crate::service::keys::{INVALIDATION_CHANNEL, KeyResolver};

const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often a live subscription's connection is checked, besides the
/// error events the client sends.
const CHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct KeyInvalidation(pub Arc<KeyResolver>);

impl Worker for KeyInvalidation {
    const NAME: &'static str = "key-invalidation";

    async fn run(self, _ctx: Context, cancel: CancellationToken) -> anyhow::Result<()> {
        let Some(redis) = self.0.redis().cloned() else {
            return Ok(());
        };
        let mut retry = RETRY_FIRST;
        loop {
            let attempt = async {
                let subscriber = Builder::from_config(redis.client().client_config())
                    .build_subscriber_client()?;
                subscriber.init().await?;
                subscriber.subscribe(INVALIDATION_CHANNEL).await?;
                Ok::<_, fred::error::Error>(subscriber)
            };
            let subscriber = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                subscriber = attempt => subscriber,
            };
            match subscriber {
                Ok(subscriber) => {
                    retry = RETRY_FIRST;
                    self.0.set_subscribed(true);
                    tracing::info!("subscribed to key invalidations");
                    let stopped = self.listen(&subscriber, &cancel).await;
                    self.0.set_subscribed(false);
                    let _ = subscriber.quit().await;
                    if stopped {
                        return Ok(());
                    }
                    tracing::warn!(
                        "key invalidation subscription lost; caching keys for at most 3 s until it is back"
                    );
                }
                Err(err) => {
                    tracing::warn!(error = %err, retry_ms = retry.as_millis() as u64, "subscribing to key invalidations failed; caching keys for at most 3 s");
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(retry) => {}
            }
            retry = (retry * 2).min(RETRY_MAX);
        }
    }
}

impl KeyInvalidation {
    /// Applies messages until the connection fails (false) or `cancel`
    /// fires (true).
    async fn listen(&self, subscriber: &SubscriberClient, cancel: &CancellationToken) -> bool {
        let mut messages = subscriber.message_rx();
        let mut errors = subscriber.error_rx();
        let mut check = tokio::time::interval(CHECK_EVERY);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return true,
                message = messages.recv() => match message {
                    Ok(message) => {
                        if let Ok(text) = message.value.convert::<String>() {
                            self.0.apply_published(&text);
                        }
                    }
                    // Missed messages: forget everything rather than serve stale keys.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.0.forget_all(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return false,
                },
                _ = errors.recv() => return false,
                _ = check.tick() => {
                    if !subscriber.is_connected() {
                        return false;
                    }
                }
            }
        }
    }
}
