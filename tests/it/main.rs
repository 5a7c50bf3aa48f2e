//! Integration tests: real PostgreSQL, real servers on loopback ports.
//! Each test owns its database (see `helpers::TestDb`).

mod auth;
mod contract;
mod durability;
mod helpers;
mod metering;
mod operations;
mod protocols;
mod storage;
mod tenants;
mod transcoding;
