//! Integration tests: real PostgreSQL, real servers on loopback ports.
//! Each test owns its database (see `helpers::TestDb`).
//!
//! Tests run on a multi-threaded runtime: a test's end drops its database
//! from a blocking `Drop`, and the server's tasks (a pool connection in
//! the middle of its SCRAM login, say) must keep running meanwhile, or
//! `DROP DATABASE … WITH (FORCE)` waits for that login to time out.

mod audit;
mod auth;
mod billing;
mod contract;
mod dedicated_database;
mod durability;
mod health;
mod helpers;
mod idempotency;
mod inbound;
mod isolation;
mod metering;
mod metrics;
mod operations;
mod protocols;
mod records;
mod resilience;
mod storage;
mod tenants;
mod transcoding;
mod users;
mod webhook_settings;
mod webhooks;
mod workers;
