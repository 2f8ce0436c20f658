//! Counters for `/metrics`, in the Prometheus text format. Every thread
//! increments atomics; rendering reads them and the cache's figures its
//! caller passes in. It knows no other module's types: HTTP counts a request
//! under a route label of its own choosing.

use crate::order::RejectionKind;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

/// The cache's figures, read by the caller under one lock and passed in at
/// render time, so that counting needs nothing from the cache.
pub struct CacheFigures {
    pub orders: usize,
    pub bytes: usize,
    pub digest: u64,
    pub loaded: bool,
}

/// Status codes counted individually; anything else is counted as "other".
const STATUSES: [u16; 7] = [200, 304, 400, 404, 405, 413, 503];
const N_KINDS: usize = RejectionKind::ALL.len();
/// Route labels counted; HTTP has ten.
const ROUTE_SLOTS: usize = 16;

/// One route label's counts by status. A slot's label is set by the first
/// request counted under it and never changes, so counting takes no lock.
#[derive(Default)]
struct RouteCounts {
    label: OnceLock<&'static str>,
    by_status: [AtomicU64; STATUSES.len() + 1],
}

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
    http: [RouteCounts; ROUTE_SLOTS],
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    pub fn rejected(&self, kind: RejectionKind) {
        self.rejected[kind.index()].fetch_add(1, Relaxed);
    }

    /// Counts a request under `route`, a fixed label such as a path
    /// template (never client text: every label takes a slot for good).
    pub fn http_request(&self, route: &'static str, status: u16) {
        let column = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len());
        // The first slot that holds the label or is free; every thread walks
        // the slots in the same order, so a label lands in one slot only.
        let slot = self
            .http
            .iter()
            .find(|slot| *slot.label.get_or_init(|| route) == route);
        debug_assert!(slot.is_some(), "more than {ROUTE_SLOTS} route labels");
        if let Some(slot) = slot {
            slot.by_status[column].fetch_add(1, Relaxed);
        }
    }

    pub fn render(&self, cache: CacheFigures) -> String {
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
        let CacheFigures {
            orders,
            bytes,
            digest,
            loaded,
        } = cache;
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
        let _ = writeln!(out, "order_service_cache_loaded {}", u8::from(loaded));
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
        for slot in &self.http {
            let Some(route) = slot.label.get() else {
                continue;
            };
            for (column, count) in slot.by_status.iter().enumerate() {
                let count = count.load(Relaxed);
                if count == 0 {
                    continue;
                }
                let status = STATUSES
                    .get(column)
                    .map_or("other".to_owned(), u16::to_string);
                let _ = writeln!(
                    out,
                    "order_service_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}"
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

/// Readiness and dependency gauges for alerts (contract C2), rendered after
/// `Metrics::render` by the HTTP side, which reads them from the health
/// record at scrape time: `ready` is what `/readyz` answers (1 = 200), and
/// `dependency_up` says whether PostgreSQL and NATS answer, which readiness
/// deliberately ignores (ARCHITECTURE.md, readiness).
pub struct ReadinessFigures {
    pub ready: bool,
    pub postgres_up: bool,
    pub nats_up: bool,
}

pub fn render_readiness(out: &mut String, figures: &ReadinessFigures) {
    metric(
        out,
        "ready",
        "1 while /readyz answers 200: cache loaded and not draining.",
        "gauge",
    );
    let _ = writeln!(out, "order_service_ready {}", u8::from(figures.ready));
    metric(
        out,
        "dependency_up",
        "1 while the dependency answered this replica's last attempt.",
        "gauge",
    );
    for (dependency, up) in [("postgres", figures.postgres_up), ("nats", figures.nats_up)] {
        let _ = writeln!(
            out,
            "order_service_dependency_up{{dependency=\"{dependency}\"}} {}",
            u8::from(up)
        );
    }
}

/// Requests announcing a body over 1 GiB, by what was done: `answered` 413
/// (up to a cap) or `closed` at once without an answer. tiny_http 0.12
/// parks one connection thread for good for each of either
/// (ARCHITECTURE.md, request bodies): the sum is the threads so held.
pub fn render_huge_bodies(out: &mut String, answered: u64, closed: u64) {
    metric(
        out,
        "http_huge_bodies_total",
        "Requests announcing a body over 1 GiB (each parks a tiny_http thread), by outcome.",
        "counter",
    );
    for (outcome, count) in [("answered", answered), ("closed", closed)] {
        let _ = writeln!(
            out,
            "order_service_http_huge_bodies_total{{outcome=\"{outcome}\"}} {count}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_labels() {
        let metrics = Metrics::new();
        metrics.rejected(RejectionKind::NotJson);
        metrics.rejected(RejectionKind::NotJson);
        metrics.http_request("/orders/{order_uid}", 404);
        metrics.http_request("/orders/{order_uid}", 418);
        metrics.http_request("/healthz", 200);
        let text = metrics.render(CacheFigures {
            orders: 0,
            bytes: 0,
            digest: 0,
            loaded: false,
        });
        assert!(text.contains("order_service_rejected_total{kind=\"not_json\"} 2\n"));
        assert!(text.contains("order_service_rejected_total{kind=\"bad_date\"} 0\n"));
        assert!(text.contains(
            "order_service_http_requests_total{route=\"/orders/{order_uid}\",status=\"404\"} 1\n"
        ));
        assert!(text.contains("status=\"other\"} 1\n"));
        assert!(text
            .contains("order_service_http_requests_total{route=\"/healthz\",status=\"200\"} 1\n"));
        assert_eq!(text.matches("route=\"/orders/{order_uid}\"").count(), 2);
        assert!(text.contains("order_service_cache_orders 0\n"));
    }
}
