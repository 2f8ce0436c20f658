//! Counters and histograms for `/metrics`, in the Prometheus text format.
//! Every thread increments atomics; rendering reads them and the cache's
//! figures its caller passes in. It knows no other module's types: HTTP
//! counts a request under a route label of its own choosing.

use crate::order::RejectionKind;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Duration;

/// Upper bounds of a `Histogram`'s buckets, in seconds: from a cache hit's
/// time to the point where the answer no longer matters (`+Inf` above).
pub const BUCKETS: [f64; 12] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// A Prometheus histogram of durations over `BUCKETS`. Observing is two
/// relaxed atomic adds (the duration's bucket and the sum); the cumulative
/// `_bucket` series and `_count` are worked out at render time, so a
/// scrape never sees a count that disagrees with its buckets.
pub struct Histogram {
    /// Observations per bucket, not cumulative; the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram::default()
    }

    pub fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    /// Writes `# HELP`, `# TYPE` and the series of an unlabelled histogram
    /// `order_service_{name}` (`name` ends in `_seconds`).
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        metric(out, name, help, "histogram");
        self.render_series(out, name, "");
    }

    /// Writes the `_bucket`, `_sum` and `_count` series under `labels`
    /// (`route="/healthz"`, or empty), for a histogram with one set of
    /// series per label value; the caller writes `# HELP` and `# TYPE` once.
    pub fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let comma = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, count) in self.buckets.iter().enumerate() {
            cumulative += count.load(Relaxed);
            let le = BUCKETS.get(i).map_or("+Inf".to_owned(), f64::to_string);
            let _ = writeln!(
                out,
                "order_service_{name}_bucket{{{labels}{comma}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "order_service_{name}_sum{braces} {sum}");
        let _ = writeln!(out, "order_service_{name}_count{braces} {cumulative}");
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }
}

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

/// One route label's counts by status, and its latencies. A slot's label is
/// set by the first request counted under it and never changes, so
/// counting takes no lock.
#[derive(Default)]
struct RouteCounts {
    label: OnceLock<&'static str>,
    by_status: [AtomicU64; STATUSES.len() + 1],
    duration: Histogram,
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
    /// How long each batch's transaction took, from its first statement to
    /// its commit.
    pub ingest_commit_duration: Histogram,
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
        if let Some(slot) = self.route_slot(route) {
            slot.by_status[column(status)].fetch_add(1, Relaxed);
        }
    }

    /// Counts a request as `http_request` does and records how long it
    /// took to answer.
    pub fn http_answered(&self, route: &'static str, status: u16, took: Duration) {
        if let Some(slot) = self.route_slot(route) {
            slot.by_status[column(status)].fetch_add(1, Relaxed);
            slot.duration.observe(took);
        }
    }

    /// The first slot that holds the label or is free; every thread walks
    /// the slots in the same order, so a label lands in one slot only.
    fn route_slot(&self, route: &'static str) -> Option<&RouteCounts> {
        let slot = self
            .http
            .iter()
            .find(|slot| *slot.label.get_or_init(|| route) == route);
        debug_assert!(slot.is_some(), "more than {ROUTE_SLOTS} route labels");
        slot
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
        metric(
            &mut out,
            "http_request_duration_seconds",
            "Time from a worker taking a request to its reply being ready, by route.",
            "histogram",
        );
        for slot in &self.http {
            if let Some(route) = slot.label.get() {
                slot.duration.render_series(
                    &mut out,
                    "http_request_duration_seconds",
                    &format!("route=\"{route}\""),
                );
            }
        }
        self.ingest_commit_duration.render(
            &mut out,
            "ingest_commit_duration_seconds",
            "Time to write and commit one batch's transaction.",
        );
        out
    }
}

fn column(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|s| *s == status)
        .unwrap_or(STATUSES.len())
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
        assert_eq!(
            text.matches("requests_total{route=\"/orders/{order_uid}\"")
                .count(),
            2
        );
        assert!(text.contains("order_service_cache_orders 0\n"));
    }

    #[test]
    fn a_histogram_renders_cumulative_buckets_sum_and_count() {
        let histogram = Histogram::new();
        histogram.observe(Duration::from_micros(100));
        histogram.observe(Duration::from_micros(250));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(2));
        let mut text = String::new();
        histogram.render(&mut text, "x_seconds", "Help.");
        assert!(text.starts_with(
            "# HELP order_service_x_seconds Help.\n# TYPE order_service_x_seconds histogram\n"
        ));
        assert!(
            text.contains("order_service_x_seconds_bucket{le=\"0.00025\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("order_service_x_seconds_bucket{le=\"0.0025\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("order_service_x_seconds_bucket{le=\"0.005\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("order_service_x_seconds_bucket{le=\"1\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("order_service_x_seconds_bucket{le=\"+Inf\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("order_service_x_seconds_sum 2.00335\n"),
            "{text}"
        );
        assert!(text.contains("order_service_x_seconds_count 4\n"), "{text}");
        assert_eq!(text.matches("_bucket{").count(), BUCKETS.len() + 1);
        assert_eq!(histogram.count(), 4);
    }

    #[test]
    fn request_durations_are_rendered_per_route() {
        let metrics = Metrics::new();
        metrics.http_answered("/healthz", 200, Duration::from_micros(50));
        metrics.http_answered("/orders/{order_uid}", 404, Duration::from_millis(30));
        metrics
            .ingest_commit_duration
            .observe(Duration::from_millis(7));
        let text = metrics.render(CacheFigures {
            orders: 0,
            bytes: 0,
            digest: 0,
            loaded: true,
        });
        assert_eq!(
            text.matches("# TYPE order_service_http_request_duration_seconds histogram\n")
                .count(),
            1
        );
        assert!(text.contains(
            "order_service_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"0.00025\"} 1\n"
        ));
        assert!(text.contains(
            "order_service_http_request_duration_seconds_bucket{route=\"/orders/{order_uid}\",le=\"0.025\"} 0\n"
        ));
        assert!(text.contains(
            "order_service_http_request_duration_seconds_count{route=\"/orders/{order_uid}\"} 1\n"
        ));
        assert!(text.contains(
            "order_service_http_requests_total{route=\"/orders/{order_uid}\",status=\"404\"} 1\n"
        ));
        assert!(
            text.contains("order_service_ingest_commit_duration_seconds_bucket{le=\"0.01\"} 1\n")
        );
        assert!(text.contains("order_service_ingest_commit_duration_seconds_count 1\n"));
    }
}
