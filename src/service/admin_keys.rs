//! Admin keys: create (plaintext once), list, revoke (effective at once on
//! every replica). Every change is audited.

use std::sync::Arc;

use serde_json::json;
use uuid::Uuid;

use super::{Actor, keys::KeyResolver};
use crate::{
    domain::tenant as rules,
    error::{ApiError, ErrorCode},
    storage::{Db, admin_keys, entities::admin_key, tenants as repo},
};

#[derive(Clone, Debug)]
pub struct AdminKeys {
    db: Db,
    keys: Arc<KeyResolver>,
}

impl AdminKeys {
    pub fn new(db: Db, keys: Arc<KeyResolver>) -> Self {
        Self { db, keys }
    }

    pub async fn create(
        &self,
        actor: &Actor,
        label: &str,
    ) -> Result<(admin_key::Model, String), ApiError> {
        let label = rules::label(label).map_err(|v| ApiError::validation(vec![v]))?;
        let tx = self.db.begin(actor.platform()?).await?;
        let plaintext = admin_keys::create(&tx, self.keys.hasher(), &label).await?;
        let digest = self.keys.hasher().digest(&plaintext);
        let row = admin_keys::list(&tx)
            .await?
            .into_iter()
            .find(|k| k.key_digest == digest)
            .ok_or_else(|| ApiError::internal("created admin key not found"))?;
        repo::audit(
            &tx,
            actor.audit(
                None,
                "admin_key.create",
                Some(row.id),
                json!({"label": label}),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok((row, plaintext))
    }

    pub async fn list(&self, actor: &Actor) -> Result<Vec<admin_key::Model>, ApiError> {
        let tx = self.db.begin(actor.platform()?).await?;
        let rows = admin_keys::list(&tx).await?;
        tx.commit().await?;
        Ok(rows)
    }

    pub async fn revoke(&self, actor: &Actor, id: Uuid) -> Result<admin_key::Model, ApiError> {
        let tx = self.db.begin(actor.platform()?).await?;
        let Some(row) = admin_keys::revoke(&tx, id).await? else {
            let exists = admin_keys::list(&tx).await?.iter().any(|k| k.id == id);
            return Err(if exists {
                ApiError::new(
                    ErrorCode::FailedPrecondition,
                    "admin key is already revoked",
                )
            } else {
                ApiError::not_found("admin key not found")
            });
        };
        repo::audit(
            &tx,
            actor.audit(
                None,
                "admin_key.revoke",
                Some(id),
                json!({"label": row.label}),
            ),
        )
        .await?;
        tx.commit().await?;
        self.keys.invalidate(vec![row.key_digest.clone()]).await;
        Ok(row)
    }
}
