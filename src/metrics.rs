//! Counters for `/metrics`, in the Prometheus text format. Every thread
//! increments atomics; rendering reads them and the cache's size and digest.

use crate::cache::OrderCache;
use crate::order::RejectionKind;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The routes HTTP requests are counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Order,
    Orders,
    RandomOrder,
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    Page,
    NotFound,
}

impl Route {
    const ALL: [Route; 9] = [
        Route::Order,
        Route::Orders,
        Route::RandomOrder,
        Route::Healthz,
        Route::Readyz,
        Route::Metrics,
        Route::OpenApi,
        Route::Page,
        Route::NotFound,
    ];

    fn label(self) -> &'static str {
        match self {
            Route::Order => "/orders/{order_uid}",
            Route::Orders => "/orders",
            Route::RandomOrder => "/random-order",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::OpenApi => "/openapi.json",
            Route::Page => "page",
            Route::NotFound => "unknown",
        }
    }
}

/// Status codes counted individually; anything else is counted as "other".
const STATUSES: [u16; 7] = [200, 304, 400, 404, 405, 413, 503];
const N_KINDS: usize = RejectionKind::ALL.len();

#[derive(Default)]
pub struct Metrics {
    pub messages_received: AtomicU64,
    pub orders_stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub batches_committed: AtomicU64,
    pub store_retries: AtomicU64,
    pub listener_reconnects: AtomicU64,
    pub bodies_refused: AtomicU64,
    pub idle_connections_closed: AtomicU64,
    pub stalled_connections_freed: AtomicU64,
    rejected: [AtomicU64; N_KINDS],
    http: [[AtomicU64; STATUSES.len() + 1]; Route::ALL.len()],
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    pub fn rejected(&self, kind: RejectionKind) {
        self.rejected[kind.index()].fetch_add(1, Relaxed);
    }

    pub fn http_request(&self, route: Route, status: u16) {
        let column = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len());
        self.http[route as usize][column].fetch_add(1, Relaxed);
    }

    pub fn render(&self, cache: &OrderCache) -> String {
        let mut out = String::with_capacity(4096);
        let counters = [
            (
                "messages_received_total",
                "Messages fetched from JetStream.",
                &self.messages_received,
            ),
            (
                "orders_stored_total",
                "Orders committed to PostgreSQL by this replica.",
                &self.orders_stored,
            ),
            (
                "duplicates_total",
                "Messages whose identical order was already stored.",
                &self.duplicates,
            ),
            (
                "batches_committed_total",
                "Batches committed by this replica's writer.",
                &self.batches_committed,
            ),
            (
                "store_retries_total",
                "Batch writes retried after a transient PostgreSQL failure.",
                &self.store_retries,
            ),
            (
                "listener_reconnects_total",
                "Times the LISTEN connection was re-established.",
                &self.listener_reconnects,
            ),
            (
                "http_bodies_refused_total",
                "Requests refused (413) for a body left on the socket.",
                &self.bodies_refused,
            ),
            (
                "http_idle_connections_closed_total",
                "HTTP connections closed after HTTP_IDLE_TIMEOUT without data.",
                &self.idle_connections_closed,
            ),
            (
                "http_stalled_connections_freed_total",
                "Connections tiny_http's pool left without a thread, given one.",
                &self.stalled_connections_freed,
            ),
        ];
        for (name, help, value) in counters {
            metric(&mut out, name, help, "counter");
            let _ = writeln!(out, "order_service_{name} {}", value.load(Relaxed));
        }
        metric(
            &mut out,
            "rejected_total",
            "Messages dead-lettered, by reason.",
            "counter",
        );
        for kind in RejectionKind::ALL {
            let _ = writeln!(
                out,
                "order_service_rejected_total{{kind=\"{}\"}} {}",
                kind.label(),
                self.rejected[kind.index()].load(Relaxed)
            );
        }
        let (orders, bytes, digest) = cache.stats();
        metric(
            &mut out,
            "cache_orders",
            "Orders in this replica's cache.",
            "gauge",
        );
        let _ = writeln!(out, "order_service_cache_orders {orders}");
        metric(
            &mut out,
            "cache_bytes",
            "Bytes of order JSON in this replica's cache.",
            "gauge",
        );
        let _ = writeln!(out, "order_service_cache_bytes {bytes}");
        metric(
            &mut out,
            "cache_loaded",
            "1 once the start-up load is complete.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "order_service_cache_loaded {}",
            u8::from(cache.is_loaded())
        );
        metric(
            &mut out,
            "cache_digest_info",
            "Order-independent digest of every cached (uid, body): equal on replicas in sync.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "order_service_cache_digest_info{{digest=\"{digest:016x}\"}} 1"
        );
        metric(
            &mut out,
            "http_requests_total",
            "HTTP requests answered, by route and status.",
            "counter",
        );
        for route in Route::ALL {
            for (column, count) in self.http[route as usize].iter().enumerate() {
                let count = count.load(Relaxed);
                if count == 0 {
                    continue;
                }
                let status = STATUSES
                    .get(column)
                    .map_or("other".to_owned(), u16::to_string);
                let _ = writeln!(
                    out,
                    "order_service_http_requests_total{{route=\"{}\",status=\"{status}\"}} {count}",
                    route.label()
                );
            }
        }
        out
    }
}

fn metric(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP order_service_{name} {help}");
    let _ = writeln!(out, "# TYPE order_service_{name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_labels() {
        let metrics = Metrics::new();
        metrics.rejected(RejectionKind::NotJson);
        metrics.rejected(RejectionKind::NotJson);
        metrics.http_request(Route::Order, 404);
        metrics.http_request(Route::Order, 418);
        let text = metrics.render(&OrderCache::new());
        assert!(text.contains("order_service_rejected_total{kind=\"not_json\"} 2\n"));
        assert!(text.contains("order_service_rejected_total{kind=\"bad_date\"} 0\n"));
        assert!(text.contains(
            "order_service_http_requests_total{route=\"/orders/{order_uid}\",status=\"404\"} 1\n"
        ));
        assert!(text.contains("status=\"other\"} 1\n"));
        assert!(text.contains("order_service_cache_orders 0\n"));
    }
}
