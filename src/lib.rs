//! Tenlyr: an open multi-tenant control plane. gRPC services (tonic) over
//! Postgres (SeaORM), with REST/JSON transcoded from the protos'
//! `google.api.http` annotations, gRPC-Web and reflection on one port.
//!
//! See `ARCHITECTURE.md` for the map of the code.

#![forbid(unsafe_code)]

pub mod app;
pub mod config;
pub mod domain;
pub mod error;
pub mod metrics;
pub mod proto;
pub mod service;
pub mod storage;
pub mod telemetry;
pub mod transport;
pub mod workers;
