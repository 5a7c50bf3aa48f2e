//! Scoped transactions: the only way request code reaches tenant-scoped
//! tables. Row-level security sees the scope through settings that are set
//! with `set_config(…, true)`, i.e. for this transaction only, so a pooled
//! connection never carries one request's tenant into the next.

use sea_orm::{
    ConnectionTrait, DatabaseBackend, DatabaseTransaction, DbErr, Statement, TransactionTrait,
};
use uuid::Uuid;

use super::Db;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Cross-tenant platform work: admin methods and key lookups.
    Platform,
    /// One tenant's rows only.
    Tenant(Uuid),
}

impl Db {
    /// Begins a transaction that can see the rows of `scope` only.
    pub async fn begin(&self, scope: Scope) -> Result<DatabaseTransaction, DbErr> {
        let tx = self.app().begin().await?;
        set_scope(&tx, scope).await?;
        Ok(tx)
    }
}

/// Switches the scope of an open transaction (provisioning writes the new
/// tenant's own rows under its tenant scope).
pub async fn set_scope(tx: &DatabaseTransaction, scope: Scope) -> Result<(), DbErr> {
    let (tenant, platform) = match scope {
        Scope::Platform => (String::new(), "platform"),
        Scope::Tenant(id) => (id.to_string(), ""),
    };
    tx.execute_raw(Statement::from_sql_and_values(
        DatabaseBackend::Postgres,
        "SELECT set_config('app.tenant_id', $1, true), set_config('app.scope', $2, true)",
        [tenant.into(), platform.into()],
    ))
    .await?;
    Ok(())
}
