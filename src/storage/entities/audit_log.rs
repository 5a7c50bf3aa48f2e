use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_log")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub occurred_at: DateTimeUtc,
    pub actor_kind: String,
    pub actor_key_id: Option<Uuid>,
    pub tenant_id: Option<Uuid>,
    pub action: String,
    pub target_id: Option<Uuid>,
    pub details: Json,
    pub request_id: Option<String>,
    pub actor_user_id: Option<Uuid>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
