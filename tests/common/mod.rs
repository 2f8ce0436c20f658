//! The black-box test harness: a fresh database, fresh NATS names, the real
//! `order-service` binary as a child process on port 0, a confirmed
//! publisher, and private PostgreSQL / NATS servers (or a NATS cluster) for
//! the tests that stop one. Nothing is mocked; every wait is bounded.
//!
//! Invariant: whatever a test creates (database, stream, process, data
//! directory) is removed by a `Drop`, so a failing test cleans up too.
//!
//! One module per concern; each test file says `pub mod common;` and
//! `use common::*;`. The `pub` is why no helper warns as dead code: every
//! test binary compiles this harness anew and uses only part of it, and a
//! public module's public items count as used, so no `allow` is needed.
//!
//! - `support`: unique names, bounded waiting, log files
//! - `postgres`: `TestDb`, connections, queries
//! - `nats`: names, the stream settings, consumer state, `Publisher`
//! - `orders`: order payloads
//! - `service`: `ServiceConfig`, `Service`, `Setup`, `World`, replicas, `/proc`
//! - `http`: requests, `HttpResponse`, `/metrics` parsing
//! - `servers`: `PrivatePostgres`, `PrivateNats`, `PrivateNatsCluster`

mod http;
mod nats;
mod orders;
mod postgres;
mod servers;
mod service;
mod support;

pub use self::http::*;
pub use self::nats::*;
pub use self::orders::*;
pub use self::postgres::*;
pub use self::servers::*;
pub use self::service::*;
pub use self::support::*;

/// The shared PostgreSQL every test may use (trust auth).
pub const SHARED_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The shared NATS server with JetStream.
pub const SHARED_NATS: &str = "nats://127.0.0.1:4222";
