//! SeaORM entities, one per table.

pub mod admin_key;
pub mod api_key;
pub mod audit_log;
pub mod tenant;
