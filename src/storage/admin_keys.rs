//! Admin keys: platform-wide, not tenant-scoped.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, Set,
    TransactionTrait,
};
use uuid::Uuid;

use super::{Db, entities::admin_key};
use crate::domain::keys::{KeyHasher, KeyKind, NewKey};

/// Creates an admin key and returns its plaintext (shown once).
pub async fn create(
    db: &impl ConnectionTrait,
    hasher: &KeyHasher,
    label: &str,
) -> Result<String, sea_orm::DbErr> {
    let key = NewKey::generate(KeyKind::Admin);
    admin_key::ActiveModel {
        id: Set(Uuid::now_v7()),
        label: Set(label.to_owned()),
        prefix: Set(key.display_prefix().to_owned()),
        key_digest: Set(hasher.digest(&key.plaintext)),
        created_at: Set(chrono::Utc::now()),
        last_used_at: Set(None),
        revoked_at: Set(None),
    }
    .insert(db)
    .await?;
    Ok(key.plaintext)
}

/// On an empty database, creates the first admin key and returns it. The
/// table lock makes replicas starting together create exactly one.
pub async fn bootstrap(db: &Db, hasher: &KeyHasher) -> Result<Option<String>, sea_orm::DbErr> {
    let tx = db.app().begin().await?;
    tx.execute_unprepared("LOCK TABLE admin_keys IN SHARE ROW EXCLUSIVE MODE")
        .await?;
    if admin_key::Entity::find().count(&tx).await? > 0 {
        tx.commit().await?;
        return Ok(None);
    }
    let key = create(&tx, hasher, "bootstrap").await?;
    tx.commit().await?;
    Ok(Some(key))
}

/// The active (not revoked) admin key with this digest.
pub async fn find_active(
    db: &Db,
    digest: &[u8],
) -> Result<Option<admin_key::Model>, sea_orm::DbErr> {
    admin_key::Entity::find()
        .filter(admin_key::Column::KeyDigest.eq(digest.to_vec()))
        .filter(admin_key::Column::RevokedAt.is_null())
        .one(db.app())
        .await
}

pub async fn list(tx: &impl ConnectionTrait) -> Result<Vec<admin_key::Model>, sea_orm::DbErr> {
    use sea_orm::QueryOrder;
    admin_key::Entity::find()
        .order_by_asc(admin_key::Column::Id)
        .all(tx)
        .await
}

/// Revokes a live key; `None` if there is no such live key.
pub async fn revoke(
    tx: &impl ConnectionTrait,
    id: Uuid,
) -> Result<Option<admin_key::Model>, sea_orm::DbErr> {
    use sea_orm::sea_query::Expr;
    let rows = admin_key::Entity::update_many()
        .col_expr(
            admin_key::Column::RevokedAt,
            Expr::value(chrono::Utc::now()),
        )
        .filter(admin_key::Column::Id.eq(id))
        .filter(admin_key::Column::RevokedAt.is_null())
        .exec_with_returning(tx)
        .await?;
    Ok(rows.into_iter().next())
}
