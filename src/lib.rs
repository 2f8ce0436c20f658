//! order-service: orders from NATS JetStream, validated, stored in
//! PostgreSQL, cached in memory and served over HTTP. `main.rs` wires the
//! threads; ARCHITECTURE.md draws them.

pub mod broker;
pub mod cache;
pub mod config;
pub mod health;
pub mod http;
pub mod ingest;
pub mod lifecycle;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod nats_auth;
pub mod order;
pub mod pg_tls;
pub mod store;
pub mod stream;
