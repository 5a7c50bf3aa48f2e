//! SeaORM entities, one per table.

pub mod admin_key;
