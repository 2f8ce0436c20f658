//! One connection: a thread with its own keep-alive ureq agent, sending
//! GET /orders/{id} until told to stop, recording latency in its own HDR
//! histogram (merged at the end, so the hot loop shares only two counters).

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Zipf};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What every connection thread reads.
pub struct Shared {
    pub known: Vec<String>,
    /// Requests answered or failed so far (for the progress display).
    pub completed: AtomicU64,
    /// Requests claimed so far (for --requests).
    pub issued: AtomicU64,
    pub stop: AtomicBool,
}

/// The run, as every connection sees it.
#[derive(Clone)]
pub struct Plan {
    pub base: String,
    pub unknown: f64,
    /// Seeds every connection's id generator (with its index).
    pub seed: u64,
    pub timeout: Duration,
    pub max_requests: Option<u64>,
    /// Known ids drawn by rank from this distribution (rank 1 = the first
    /// id of the list) instead of uniformly.
    pub zipf: Option<Zipf<f64>>,
    /// Open loop: one request per this interval on each connection.
    pub per_connection_interval: Option<Duration>,
}

/// What one connection measured.
pub struct WorkerReport {
    /// Microseconds per answered request (open loop: from when it was due).
    pub latency: Histogram<u64>,
    /// The same latencies by HTTP status (a count per status is its `len()`).
    pub by_status: BTreeMap<u16, Histogram<u64>>,
    pub bytes: u64,
    pub errors: u64,
    pub unexpected: u64,
    pub error_samples: Vec<String>,
}

const MAX_ERROR_SAMPLES: usize = 5;

/// Microseconds from 1 µs to 60 s, three significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

impl WorkerReport {
    pub fn new() -> WorkerReport {
        WorkerReport {
            latency: histogram(),
            by_status: BTreeMap::new(),
            bytes: 0,
            errors: 0,
            unexpected: 0,
            error_samples: Vec::new(),
        }
    }

    pub fn merge(&mut self, other: WorkerReport) {
        self.latency
            .add(&other.latency)
            .expect("histograms with the same bounds");
        for (status, latency) in other.by_status {
            self.by_status
                .entry(status)
                .or_insert_with(histogram)
                .add(&latency)
                .expect("histograms with the same bounds");
        }
        self.bytes += other.bytes;
        self.errors += other.errors;
        self.unexpected += other.unexpected;
        for sample in other.error_samples {
            if self.error_samples.len() < MAX_ERROR_SAMPLES {
                self.error_samples.push(sample);
            }
        }
    }

    fn sample(&mut self, text: String) {
        if self.error_samples.len() < MAX_ERROR_SAMPLES {
            self.error_samples.push(text);
        }
    }
}

/// A keep-alive agent that returns 4xx/5xx as responses, not errors.
///
/// Every phase but name resolution gets the timeout: with a resolve timeout
/// (which `timeout_global` implies) ureq resolves the host on a new thread
/// for every request, even on a kept-alive connection, which tripled the
/// client's CPU per request.
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(timeout))
        .timeout_send_request(Some(timeout))
        .timeout_recv_response(Some(timeout))
        .timeout_recv_body(Some(timeout))
        .max_idle_connections(4)
        .max_idle_connections_per_host(4)
        .build()
        .into()
}

pub fn run(
    index: usize,
    connections: usize,
    plan: &Plan,
    shared: &Shared,
    started: Instant,
) -> WorkerReport {
    let agent = agent(plan.timeout);
    // The seed in the high half, the connection in the low: distinct for
    // every (seed, connection) pair of small seeds.
    let mut rng = SmallRng::seed_from_u64(plan.seed.rotate_left(32) ^ index as u64);
    let mut report = WorkerReport::new();
    let mut path = String::with_capacity(plan.base.len() + 80);
    // Open loop: connection `index` starts `index / connections` of an
    // interval late, so the connections interleave evenly.
    let mut due = plan
        .per_connection_interval
        .map(|interval| started + interval.mul_f64(index as f64 / connections as f64));
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(at) = due {
            let now = Instant::now();
            if at > now {
                // Sleep in slices so a stop is seen promptly.
                std::thread::sleep((at - now).min(Duration::from_millis(100)));
                continue;
            }
        }
        if let Some(max) = plan.max_requests {
            if shared.issued.fetch_add(1, Ordering::Relaxed) >= max {
                break;
            }
        }
        let send_at = due.unwrap_or_else(Instant::now);
        let unknown = shared.known.is_empty() || rng.random_bool(plan.unknown);
        path.clear();
        path.push_str(&plan.base);
        path.push_str("/orders/");
        if unknown {
            path.push_str("unknown-");
            for _ in 0..16 {
                path.push(char::from(b"0123456789abcdef"[rng.random_range(0..16)]));
            }
        } else {
            let index = match &plan.zipf {
                // Zipf draws a rank in 1..=n as a float.
                Some(zipf) => (zipf.sample(&mut rng) as usize).clamp(1, shared.known.len()) - 1,
                None => rng.random_range(0..shared.known.len()),
            };
            path.push_str(&shared.known[index]);
        }
        match agent.get(path.as_str()).call() {
            Ok(mut response) => {
                let status = response.status().as_u16();
                match response.body_mut().read_to_vec() {
                    Ok(body) => {
                        let micros = send_at.elapsed().as_micros() as u64;
                        report.latency.saturating_record(micros.max(1));
                        report
                            .by_status
                            .entry(status)
                            .or_insert_with(histogram)
                            .saturating_record(micros.max(1));
                        report.bytes += body.len() as u64;
                        let expected = if unknown { 404 } else { 200 };
                        if status != expected {
                            report.unexpected += 1;
                            report.sample(format!(
                                "GET {path}: {status} {}",
                                String::from_utf8_lossy(&body[..body.len().min(200)])
                            ));
                        }
                    }
                    Err(err) => {
                        report.errors += 1;
                        report.sample(format!("GET {path}: reading the body: {err}"));
                    }
                }
            }
            Err(err) => {
                report.errors += 1;
                report.sample(format!("GET {path}: {err}"));
            }
        }
        shared.completed.fetch_add(1, Ordering::Relaxed);
        if let (Some(at), Some(interval)) = (due.as_mut(), plan.per_connection_interval) {
            *at += interval;
        }
    }
    report
}
