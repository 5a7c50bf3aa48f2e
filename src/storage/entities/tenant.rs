use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tenants")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub name: String,
    pub slug: String,
    pub owner_email: String,
    pub plan: String,
    pub status: String,
    pub region: String,
    pub time_zone: String,
    pub isolation_level: String,
    pub suspended_reason: Option<String>,
    pub api_key_prefix: String,
    pub api_call_limit: Option<i64>,
    pub storage_gb_limit: Option<i64>,
    pub seats_limit: Option<i64>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub last_active_at: Option<DateTimeUtc>,
    /// Throttle in requests per minute (`None`: none).
    pub rate_limit: Option<i32>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
