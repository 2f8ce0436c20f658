//! The HTTP side, run by the `http-N` workers and two helper threads:
//!
//! - `routes`: the pure `route`, from a request to a reply over the cache;
//! - `encoding`: ETags, 304s, `Cache-Control` and gzip, settled after routing;
//! - `server`: the tiny_http server loop (bind, workers, stop);
//! - `wire`: a reply as one buffer of bytes, written at once;
//! - `workarounds`: everything that exists because of tiny_http's gaps
//!   (refused bodies, idle connections, the stalled pool, the watchdog).

pub mod encoding;
pub mod routes;
pub mod server;
pub mod wire;
pub mod workarounds;

pub use routes::{route, route_on, HttpState, Served};
pub use server::Server;
