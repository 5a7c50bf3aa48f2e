//! Domain types and rules; no transport or storage imports.

pub mod billing;
pub mod health;
pub mod inbound;
pub mod isolation;
pub mod keys;
pub mod record;
pub mod secrets;
pub mod tenant;
pub mod usage;
pub mod user;
pub mod webhook;
