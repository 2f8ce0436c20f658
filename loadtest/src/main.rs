//! `loadtest`: a thread-pool HTTP load generator for `GET /orders/{id}`.
//! Samples known ids from the service's `GET /orders` pages, then runs one
//! thread per connection (each its own keep-alive ureq agent) for a duration
//! or a number of requests, closed-loop or at a fixed rate (open loop), and
//! reports throughput, HDR-histogram latency percentiles (overall and per
//! HTTP status) and status counts. Ids are drawn uniformly, or by rank from
//! a Zipf distribution (`--zipf S`) to model a hot set.

mod worker;

use clap::Parser;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use worker::{Plan, Shared, WorkerReport};

/// Load-tests GET /orders/{order_uid} of the order service.
///
/// Known ids are sampled first from GET /orders (newest first, pages of up to
/// 1000), or read from --ids. Each connection is one thread with its own keep-alive HTTP agent;
/// without --rate each sends its next request as soon as the last answer is
/// read (closed loop); with --rate the requests are spread evenly in time and
/// latency counts from the moment a request was due (open loop, no
/// coordinated omission). With --zipf S the known ids are drawn by rank: the
/// k-th id of the list (or of the sample) with probability proportional to
/// 1/k^S, so the list's order is its order of popularity. A 200 for a known id and a 404 for an unknown one
/// are expected; anything else counts as unexpected.
///
/// Exit status: 0 when every request got an expected answer, 1 when some
/// failed or got an unexpected status, 2 when loadtest could not start.
#[derive(Parser, Debug)]
#[command(name = "loadtest", version, verbatim_doc_comment)]
struct Args {
    /// Base URL of the service.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,

    /// Concurrent connections, one thread each.
    #[arg(long, short = 'c', default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    connections: u64,

    /// How long to run (e.g. 10s, 500ms, 2m). Default 10s unless --requests is given.
    #[arg(long, short = 'd', value_parser = parse_duration)]
    duration: Option<Duration>,

    /// Total requests to send, instead of a duration.
    #[arg(long, short = 'n', conflicts_with = "duration")]
    requests: Option<u64>,

    /// Requests per second over all connections (open loop). Default: as
    /// fast as the connections go (closed loop).
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,

    /// Fraction (0 to 1) of requests for ids the service does not have.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    unknown: f64,

    /// How many known ids to sample from GET /orders.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    sample: u64,

    /// Read the known ids from this file (one per line) instead of sampling
    /// GET /orders, e.g. to load a static server holding the same bodies.
    #[arg(long, value_name = "FILE", conflicts_with = "sample")]
    ids: Option<std::path::PathBuf>,

    /// Draw known ids from a Zipf distribution of this exponent over the
    /// list's order (1.0 is the classic web-cache skew) instead of uniformly.
    #[arg(long, value_name = "S", value_parser = parse_exponent)]
    zipf: Option<f64>,

    /// Seed of the ids drawn: each connection draws from its own generator
    /// seeded from it, so a run with the same seed asks for the same ids in
    /// the same order. Give runs against one cache different seeds, or the
    /// second replays the first's ids (warm-up, then measurement).
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,

    /// Per-request timeout.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,

    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(report) => {
            report.print(args.json);
            if report.errors == 0 && report.unexpected == 0 && report.requests > 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(message) => {
            eprintln!("loadtest: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<Report, String> {
    let base = args.url.trim_end_matches('/').to_owned();
    let known = match &args.ids {
        Some(path) => read_ids(path)?,
        None => sample_ids(&base, args.sample as usize, args.timeout)?,
    };
    if known.is_empty() && args.unknown < 1.0 && args.ids.is_some() {
        return Err("the --ids file holds no ids".to_owned());
    }
    if known.is_empty() && args.unknown < 1.0 {
        return Err(format!(
            "{base}/orders lists no orders: publish some first (e.g. `pusher --count 1000`), \
             or ask only for unknown ids with --unknown 1"
        ));
    }
    let duration = match (args.duration, args.requests) {
        (Some(duration), _) => Some(duration),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let shared = Arc::new(Shared {
        known,
        completed: AtomicU64::new(0),
        issued: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let connections = args.connections as usize;
    let zipf = match args.zipf {
        Some(s) if !shared.known.is_empty() => Some(
            rand_distr::Zipf::new(shared.known.len() as f64, s)
                .map_err(|e| format!("--zipf {s}: {e}"))?,
        ),
        _ => None,
    };
    let plan = Plan {
        zipf,
        base: base.clone(),
        unknown: args.unknown,
        seed: args.seed,
        timeout: args.timeout,
        max_requests: args.requests,
        per_connection_interval: args
            .rate
            .map(|rate| Duration::from_secs_f64(connections as f64 / rate)),
    };

    let started = Instant::now();
    let deadline = duration.map(|d| started + d);
    let handles: Vec<_> = (0..connections)
        .map(|index| {
            let shared = Arc::clone(&shared);
            let plan = plan.clone();
            std::thread::Builder::new()
                .name(format!("conn-{index}"))
                .spawn(move || worker::run(index, connections, &plan, &shared, started))
                .map_err(|e| format!("cannot start a thread: {e}"))
        })
        .collect::<Result<_, _>>()?;

    let progress = Progress::new(duration, args.requests);
    loop {
        let finished = handles.iter().all(|h| h.is_finished());
        if finished {
            break;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            shared.stop.store(true, Ordering::Relaxed);
        }
        progress.update(&shared, started);
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = started.elapsed();
    progress.finish();

    let mut total = WorkerReport::new();
    for handle in handles {
        let report = handle
            .join()
            .map_err(|_| "a connection thread panicked".to_owned())?;
        total.merge(report);
    }
    Ok(Report::new(args, &base, &shared, total, elapsed))
}

fn read_ids(path: &std::path::Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Pages through GET /orders until `wanted` ids are known or the list ends.
fn sample_ids(base: &str, wanted: usize, timeout: Duration) -> Result<Vec<String>, String> {
    #[derive(serde::Deserialize)]
    struct Page {
        orders: Vec<String>,
        next_cursor: Option<String>,
    }
    let agent = worker::agent(timeout);
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    while ids.len() < wanted {
        let limit = (wanted - ids.len()).min(1000);
        let mut request = agent
            .get(format!("{base}/orders"))
            .query("limit", limit.to_string());
        if let Some(cursor) = &cursor {
            request = request.query("cursor", cursor);
        }
        let mut response = request
            .call()
            .map_err(|e| format!("cannot reach {base}/orders: {e}: is the service running?"))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_vec()
            .map_err(|e| format!("cannot read {base}/orders: {e}"))?;
        if status != 200 {
            return Err(format!(
                "GET {base}/orders answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let page: Page = serde_json::from_slice(&body)
            .map_err(|e| format!("GET {base}/orders: unexpected body ({e})"))?;
        ids.extend(page.orders);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok(ids)
}

#[derive(Serialize)]
struct Report {
    url: String,
    connections: u64,
    mode: &'static str,
    target_rate: Option<f64>,
    known_ids: usize,
    unknown_fraction: f64,
    /// The Zipf exponent ids were drawn with; null for uniform.
    zipf: Option<f64>,
    elapsed_seconds: f64,
    requests: u64,
    requests_per_second: f64,
    bytes_per_second: f64,
    latency_ms: Latency,
    status: BTreeMap<u16, u64>,
    /// Latency percentiles of the answers with each status (e.g. cache hits
    /// and misses, when they answer differently).
    latency_by_status_ms: BTreeMap<u16, Latency>,
    /// Requests with no HTTP answer (refused, reset, timed out).
    errors: u64,
    /// Answers other than 200 for a known id or 404 for an unknown one.
    unexpected: u64,
    error_samples: Vec<String>,
}

#[derive(Serialize)]
struct Latency {
    mean: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    p99_9: f64,
    max: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Latency {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Latency {
            mean: histogram.mean() / 1000.0,
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p99_9: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

impl Report {
    fn new(
        args: &Args,
        base: &str,
        shared: &Shared,
        total: WorkerReport,
        elapsed: Duration,
    ) -> Report {
        let seconds = elapsed.as_secs_f64();
        let requests = total.latency.len();
        Report {
            url: format!("{base}/orders/{{id}}"),
            connections: args.connections,
            mode: if args.rate.is_some() {
                "open loop"
            } else {
                "closed loop"
            },
            target_rate: args.rate,
            known_ids: shared.known.len(),
            unknown_fraction: args.unknown,
            zipf: args.zipf,
            elapsed_seconds: seconds,
            requests: requests + total.errors,
            requests_per_second: requests as f64 / seconds,
            bytes_per_second: total.bytes as f64 / seconds,
            latency_ms: Latency::of(&total.latency),
            status: total
                .by_status
                .iter()
                .map(|(status, h)| (*status, h.len()))
                .collect(),
            latency_by_status_ms: total
                .by_status
                .iter()
                .map(|(status, h)| (*status, Latency::of(h)))
                .collect(),
            errors: total.errors,
            unexpected: total.unexpected,
            error_samples: total.error_samples,
        }
    }

    fn print(&self, json: bool) {
        if json {
            println!(
                "{}",
                serde_json::to_string(self).expect("a report serialises")
            );
            return;
        }
        let l = &self.latency_ms;
        println!(
            "GET {}: {} connections, {}{}, {} known ids{}, {:.0}% unknown",
            self.url,
            self.connections,
            self.mode,
            self.target_rate
                .map(|r| format!(" at {r:.0}/s"))
                .unwrap_or_default(),
            self.known_ids,
            self.zipf
                .map(|s| format!(" (Zipf s = {s})"))
                .unwrap_or_default(),
            self.unknown_fraction * 100.0
        );
        println!(
            "requests   {} in {:.2} s: {:.0}/s, {:.1} MB/s",
            self.requests,
            self.elapsed_seconds,
            self.requests_per_second,
            self.bytes_per_second / 1e6
        );
        println!(
            "latency    p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms (mean {:.3} ms)",
            l.p50, l.p90, l.p99, l.p99_9, l.max, l.mean
        );
        let statuses: Vec<String> = self
            .status
            .iter()
            .map(|(status, n)| format!("{status}: {n}"))
            .collect();
        println!("status     {}", statuses.join(", "));
        if self.latency_by_status_ms.len() > 1 {
            for (status, l) in &self.latency_by_status_ms {
                println!(
                    "  {status}      p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                    l.p50, l.p90, l.p99, l.max
                );
            }
        }
        println!(
            "errors     {} without an answer, {} unexpected status",
            self.errors, self.unexpected
        );
        for sample in &self.error_samples {
            println!("           e.g. {sample}");
        }
    }
}

/// A progress bar on a terminal, a plain line every 2 s elsewhere.
struct Progress {
    bar: Option<ProgressBar>,
    /// The bar counts requests (--requests), else milliseconds.
    by_requests: bool,
    last_line: std::cell::Cell<Instant>,
}

impl Progress {
    fn new(duration: Option<Duration>, requests: Option<u64>) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let (bar, template) = match (duration, requests) {
                (Some(duration), _) => (
                    ProgressBar::new(duration.as_millis() as u64),
                    "{spinner} [{bar:30}] {elapsed}/{duration} {msg}",
                ),
                (None, Some(n)) => (
                    ProgressBar::new(n),
                    "{spinner} [{bar:30}] {pos}/{len} requests {msg}",
                ),
                (None, None) => (ProgressBar::new_spinner(), "{spinner} {msg}"),
            };
            bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
            bar.set_style(
                ProgressStyle::with_template(template)
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar
        });
        Progress {
            bar,
            by_requests: duration.is_none(),
            last_line: std::cell::Cell::new(Instant::now()),
        }
    }

    fn update(&self, shared: &Shared, started: Instant) {
        let done = shared.completed.load(Ordering::Relaxed);
        let seconds = started.elapsed().as_secs_f64();
        let rate = done as f64 / seconds.max(1e-9);
        match &self.bar {
            Some(bar) => {
                if self.by_requests {
                    bar.set_position(done);
                } else {
                    bar.set_position(started.elapsed().as_millis() as u64);
                }
                bar.set_message(format!("{done} requests, {rate:.0}/s"));
            }
            None => {
                if self.last_line.get().elapsed() >= Duration::from_secs(2) {
                    self.last_line.set(Instant::now());
                    eprintln!("loadtest: {seconds:.0}s {done} requests ({rate:.0}/s)");
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(rate),
        _ => Err(format!(
            "expected requests per second (> 0), found {text:?}"
        )),
    }
}

fn parse_exponent(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 && s.is_finite() => Ok(s),
        _ => Err(format!("expected a Zipf exponent (> 0), found {text:?}")),
    }
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!(
            "expected a fraction between 0 and 1, found {text:?}"
        )),
    }
}

/// `10s`, `500ms`, `2m`, or a number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("expected a duration like 10s, 500ms, 2m, found {text:?}");
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" | "min" => number * 60.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("x").is_err());
        assert!(parse_rate("-1").is_err());
        assert!(parse_fraction("2").is_err());
        assert_eq!(parse_exponent("1.0"), Ok(1.0));
        assert!(parse_exponent("0").is_err());
        use clap::CommandFactory;
        Args::command().debug_assert();
    }

    /// Rank 1 of a Zipf(1.0) over 1000 ids is drawn about 1/H(1000) = 13%
    /// of the time, and the top tenth of the ranks about 69%: the mapping
    /// from a drawn rank to a list index must keep that shape.
    #[test]
    fn zipf_ranks_follow_the_list_order() {
        use rand::SeedableRng;
        use rand_distr::Distribution;
        let zipf = rand_distr::Zipf::new(1000.0, 1.0).unwrap();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let draws = 100_000;
        let (mut first, mut top_tenth) = (0, 0);
        for _ in 0..draws {
            let index = (zipf.sample(&mut rng) as usize).clamp(1, 1000) - 1;
            first += usize::from(index == 0);
            top_tenth += usize::from(index < 100);
        }
        let first = first as f64 / draws as f64;
        let top_tenth = top_tenth as f64 / draws as f64;
        assert!((first - 0.134).abs() < 0.01, "rank 1 drawn {first}");
        assert!(
            (top_tenth - 0.69).abs() < 0.02,
            "top tenth drawn {top_tenth}"
        );
    }

    #[test]
    fn latency_from_histogram() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for micros in 1..=1000 {
            h.record(micros).unwrap();
        }
        let l = Latency::of(&h);
        assert!((l.p50 - 0.5).abs() < 0.01, "{}", l.p50);
        assert!((l.max - 1.0).abs() < 0.01, "{}", l.max);
    }
}
