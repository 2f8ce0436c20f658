//! `pusher`: publishes generated orders (and, on request, hostile messages
//! and duplicates) to the service's JetStream stream, every one confirmed by
//! a PubAck. The main thread generates, publishes and collects acks
//! (publisher.rs); a signal flag stops it early and the summary still prints.

mod publisher;

use clap::Parser;
use fake::Fake;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use order_service::stream;
use publisher::{Counts, Publisher, Settings};
use pusher::documents::{split_documents, Document};
use pusher::{invalid_kinds, invalid_message, parse_invalid_kind, Order, OrderSpec, RejectionKind};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Publishes realistic orders to the order service's NATS JetStream stream.
///
/// Every message is confirmed by a JetStream PubAck (publishes are pipelined:
/// up to --window in flight) and carries the header Nats-Msg-Id = order_uid,
/// so a retried or repeated message is stored once. If the stream does not
/// exist, pusher creates it the way the service does (file storage, the
/// subject, a 2-minute duplicate window); an existing stream must take the
/// subject. With no arguments it publishes 1000 orders to the stream of
/// `make run` and prints a summary.
///
/// Exit status: 0 when every message was confirmed, 1 when some were not,
/// 2 when pusher could not start (bad flags, NATS unreachable).
#[derive(Parser, Debug)]
#[command(name = "pusher", version, verbatim_doc_comment)]
struct Args {
    /// NATS server URL; a comma-separated list is accepted. User and
    /// password or a token may be part of it; tls:// asks for TLS.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    nats_url: String,

    #[command(flatten)]
    nats_files: order_service::nats_auth::NatsFileArgs,

    /// JetStream stream that takes the subject.
    #[arg(long, env = "NATS_STREAM", default_value = stream::DEFAULT_STREAM)]
    nats_stream: String,

    /// Subject to publish orders on.
    #[arg(long, env = "NATS_SUBJECT", default_value = stream::DEFAULT_SUBJECT)]
    nats_subject: String,

    /// The service's message size limit: a too_large message is one byte
    /// over it. NATS itself refuses messages over its max_payload (1 MiB by
    /// default), so too_large needs the service run with a lower limit.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 1_048_576)]
    max_message_bytes: usize,

    /// Messages to publish (orders, invalid ones and duplicates together), or
    /// `forever` (until Ctrl-C). Default: 1000; forever with --interval; every
    /// document once with --from.
    #[arg(long, short = 'n', value_parser = parse_count)]
    count: Option<Count>,

    /// Messages per second, or `unlimited` (the default): as fast as the
    /// window of unconfirmed messages allows.
    #[arg(long, value_parser = parse_rate, conflicts_with = "interval")]
    rate: Option<f64>,

    /// One message per interval (the old demo behaviour), e.g. 20s, 500ms,
    /// 2m. Implies --count forever unless --count is given.
    #[arg(long, value_parser = parse_duration)]
    interval: Option<Duration>,

    /// Items per order, MIN..MAX inclusive (or a single N).
    #[arg(long, default_value = "1..5", value_parser = parse_items)]
    items: RangeInclusive<usize>,

    /// Fraction (0 to 1) of messages that republish a recent message with
    /// its Nats-Msg-Id; the server reports them as duplicates.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    duplicates: f64,

    /// Fraction (0 to 1) of messages that are invalid (see --invalid-kind).
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    invalid: f64,

    /// Which invalid messages: `all` (a random kind each time) or one of
    /// not_utf8, not_json, not_object, missing_field, wrong_type,
    /// negative_amount, sale_out_of_range, empty_items, bad_order_uid,
    /// bad_date, too_large, too_deep, nul_character, conflicting_duplicate.
    /// The service records each under exactly that kind. A
    /// conflicting_duplicate is a valid body under the order_uid of an order
    /// published earlier, sent under another Nats-Msg-Id.
    #[arg(long, default_value = "all", value_parser = parse_kind_choice)]
    invalid_kind: KindChoice,

    /// Publish these files instead of generated orders: each holds one JSON
    /// document or JSON lines (non-JSON lines are published as they are).
    /// Repeatable. --items, --invalid and --seed do not apply.
    #[arg(long, value_name = "FILE")]
    from: Vec<PathBuf>,

    /// Seed for the generator: the same seed and flags publish the same
    /// messages. Default: random (printed in the summary).
    #[arg(long)]
    seed: Option<u64>,

    /// Most messages in flight (sent, not yet confirmed).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    window: u64,

    /// Resend a message (same Nats-Msg-Id) not confirmed after this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    ack_timeout: Duration,

    /// Attempts per message before it counts as failed.
    #[arg(long, default_value_t = 10)]
    max_attempts: u32,

    /// At the end, how long to wait for the last confirmations.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    drain_timeout: Duration,

    /// Write the messages to stdout, one per line, instead of publishing
    /// (no NATS needed). Handy to make a --from file.
    #[arg(long)]
    print: bool,

    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy)]
enum Count {
    Messages(u64),
    Forever,
}

#[derive(Debug, Clone)]
enum KindChoice {
    All,
    One(RejectionKind),
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("pusher: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<ExitCode, String> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|e| format!("cannot handle signals: {e}"))?;
    }
    let documents = read_documents(&args.from)?;
    let count = match (args.count, &documents, args.interval) {
        (Some(count), _, _) => count,
        (None, Some(documents), _) => Count::Messages(documents.len() as u64),
        (None, None, Some(_)) => Count::Forever,
        (None, None, None) => Count::Messages(1000),
    };
    let mut kinds: Vec<RejectionKind> = match args.invalid_kind {
        KindChoice::All => invalid_kinds(),
        KindChoice::One(kind) => vec![kind],
    };

    if args.print {
        let mut source = Source::new(&args, seed, kinds, documents);
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let mut n = 0u64;
        while !count.reached(n) && !stop.load(Ordering::Relaxed) {
            let Some(message) = source.next() else { break };
            source.remember(&message);
            out.write_all(&message.body)
                .and_then(|()| out.write_all(b"\n"))
                .map_err(|e| format!("cannot write to stdout: {e}"))?;
            n += 1;
        }
        out.flush()
            .map_err(|e| format!("cannot write to stdout: {e}"))?;
        return Ok(ExitCode::SUCCESS);
    }

    let nats = order_service::nats_auth::NatsTarget::new(&args.nats_url, &args.nats_files.files())?;
    let options = nats
        .options()
        .map_err(|e| format!("NATS credentials: {e}"))?;
    let nc = nats
        .connect(options.with_name("pusher"))
        .map_err(|e| match e.is_permanent() {
            true => e.to_string(),
            false => format!("cannot connect: {e}: is nats-server running?"),
        })?;
    let stream_note = publisher::ensure_stream(&nc, &args.nats_stream, &args.nats_subject)?;
    let mut publisher = Publisher::new(
        nc.clone(),
        &args.nats_subject,
        Settings {
            window: args.window as usize,
            ack_timeout: args.ack_timeout,
            max_attempts: args.max_attempts,
        },
    )
    .map_err(|e| format!("cannot subscribe to the PubAck inbox: {e}"))?;

    // A too_large message (one byte over the service's limit) must still fit
    // NATS's max_payload, or the server would close the connection.
    let too_large_size = Publisher::wire_size("x".repeat(40).as_str(), args.max_message_bytes + 1);
    if documents.is_none() && args.invalid > 0.0 && too_large_size > publisher.max_payload() {
        let why = format!(
            "too_large messages need {too_large_size} bytes but the server's max_payload is {}: \
             run the service and pusher with MAX_MESSAGE_BYTES below it (e.g. 65536)",
            publisher.max_payload()
        );
        match args.invalid_kind {
            KindChoice::One(RejectionKind::TooLarge) => return Err(why),
            _ => {
                kinds.retain(|kind| *kind != RejectionKind::TooLarge);
                eprintln!("pusher: leaving out too_large: {why}");
            }
        }
    }

    eprintln!(
        "pusher: {stream_note}; publishing to {} on {} (seed {seed})",
        args.nats_subject,
        nats.display()
    );
    let mut source = Source::new(&args, seed, kinds, documents);
    let pace = args
        .interval
        .map(|interval| interval.as_secs_f64())
        .or(args.rate.map(|rate| 1.0 / rate));
    let mut progress = Progress::new(count, args.interval.is_some());
    let started = Instant::now();
    let mut skipped = 0u64;
    let mut n = 0u64;
    let mut result: Result<(), String> = Ok(());
    while !count.reached(n) && !stop.load(Ordering::Relaxed) {
        if let Some(seconds_per_message) = pace {
            let due = started + Duration::from_secs_f64(seconds_per_message * n as f64);
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now >= due {
                    break;
                }
                let wait = (due - now).min(Duration::from_millis(200));
                if let Err(e) = publisher.poll(wait) {
                    result = Err(format!("lost the PubAck subscription: {e}"));
                    break;
                }
                progress.tick(&publisher.counts, publisher.in_flight());
            }
            if stop.load(Ordering::Relaxed) || result.is_err() {
                break;
            }
        }
        let Some(message) = source.next() else { break };
        n += 1;
        source.remember(&message);
        let line = progress
            .every_message
            .then(|| format!("published {} ({})", message.msg_id, message.class));
        match publisher.publish(message.msg_id, message.body) {
            Ok(()) => {
                if let Some(line) = line {
                    progress.note(&line);
                }
            }
            Err(publisher::PublishError::OverMaxPayload { size, max_payload }) => {
                skipped += 1;
                progress.note(&format!(
                    "skipped a message of {size} bytes: over the server's max_payload of {max_payload}"
                ));
            }
            Err(publisher::PublishError::Io(e)) => {
                result = Err(format!("cannot publish: {e}"));
                break;
            }
        }
        progress.tick(&publisher.counts, publisher.in_flight());
    }
    let published_for = started.elapsed();
    let unconfirmed = publisher
        .finish(args.drain_timeout)
        .map_err(|e| format!("lost the PubAck subscription: {e}"))?;
    let elapsed = started.elapsed();
    progress.finish();
    nc.close();

    let summary = Summary {
        counts: publisher.counts.clone(),
        invalid: source.n_invalid,
        duplicates_sent: source.n_duplicates,
        skipped,
        unconfirmed,
        seed,
        elapsed_seconds: elapsed.as_secs_f64(),
        publish_seconds: published_for.as_secs_f64(),
        confirmed_per_second: publisher.counts.confirmed as f64 / elapsed.as_secs_f64(),
        last_error: publisher.last_error.clone(),
    };
    summary.print(args.json);
    result?;
    let complete = summary.counts.failed == 0 && skipped == 0;
    Ok(if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

impl Count {
    fn reached(self, n: u64) -> bool {
        match self {
            Count::Messages(limit) => n >= limit,
            Count::Forever => false,
        }
    }
}

/// One message to publish.
struct Outgoing {
    msg_id: String,
    body: Vec<u8>,
    class: Class,
    /// The generated order, for a valid one (a later conflict may need it).
    order: Option<Order>,
}

#[derive(Debug, Clone, Copy)]
enum Class {
    Order,
    Invalid(RejectionKind),
    Duplicate,
    Document,
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Class::Order => f.write_str("order"),
            Class::Invalid(kind) => write!(f, "invalid: {kind}"),
            Class::Duplicate => f.write_str("duplicate"),
            Class::Document => f.write_str("document"),
        }
    }
}

/// How many recent messages duplicates and conflicts are drawn from.
const RECENT: usize = 1024;

/// Where messages come from: the generator (orders, invalid ones,
/// duplicates) or --from documents.
struct Source {
    rng: StdRng,
    spec: OrderSpec,
    invalid: f64,
    kinds: Vec<RejectionKind>,
    duplicates: f64,
    max_message_bytes: usize,
    documents: Option<std::vec::IntoIter<Document>>,
    n_documents: u64,
    /// Recently sent (msg_id, body), for duplicates.
    recent: VecDeque<(String, Vec<u8>)>,
    /// Recently sent valid orders, for conflicting duplicates.
    recent_orders: VecDeque<Order>,
    /// A conflicting duplicate waiting for its original to be sent first.
    queued: Option<Outgoing>,
    n_conflicts: u64,
    n_invalid: u64,
    n_duplicates: u64,
}

impl Source {
    fn new(
        args: &Args,
        seed: u64,
        kinds: Vec<RejectionKind>,
        documents: Option<Vec<Document>>,
    ) -> Source {
        Source {
            rng: StdRng::seed_from_u64(seed),
            spec: OrderSpec {
                items: args.items.clone(),
            },
            invalid: if kinds.is_empty() { 0.0 } else { args.invalid },
            kinds,
            duplicates: args.duplicates,
            max_message_bytes: args.max_message_bytes,
            documents: documents.map(Vec::into_iter),
            n_documents: 0,
            recent: VecDeque::with_capacity(RECENT),
            recent_orders: VecDeque::with_capacity(RECENT),
            queued: None,
            n_conflicts: 0,
            n_invalid: 0,
            n_duplicates: 0,
        }
    }

    /// The next message, or `None` when the --from documents are used up.
    fn next(&mut self) -> Option<Outgoing> {
        if let Some(queued) = self.queued.take() {
            return Some(queued);
        }
        if self.duplicates > 0.0 && !self.recent.is_empty() && self.rng.random_bool(self.duplicates)
        {
            let (msg_id, body) = self.recent[self.rng.random_range(0..self.recent.len())].clone();
            return Some(Outgoing {
                msg_id,
                body,
                class: Class::Duplicate,
                order: None,
            });
        }
        if let Some(documents) = &mut self.documents {
            let document = documents.next()?;
            self.n_documents += 1;
            let msg_id = document
                .order_uid
                .filter(|uid| uid_is_header_safe(uid))
                .unwrap_or_else(|| format!("document-{}", self.n_documents));
            return Some(Outgoing {
                msg_id,
                body: document.bytes,
                class: Class::Document,
                order: None,
            });
        }
        let order: Order = self.spec.fake_with_rng(&mut self.rng);
        if self.invalid > 0.0 && self.rng.random_bool(self.invalid) {
            let kind = self.kinds[self.rng.random_range(0..self.kinds.len())];
            if kind == RejectionKind::ConflictingDuplicate {
                return Some(self.conflict(order));
            }
            let body = invalid_message(kind, &order, self.max_message_bytes, &mut self.rng);
            return Some(Outgoing {
                msg_id: format!("{}-{}", order.order_uid, kind.label()),
                body,
                class: Class::Invalid(kind),
                order: None,
            });
        }
        Some(Outgoing {
            msg_id: order.order_uid.clone(),
            body: serde_json::to_vec(&order).expect("an order serialises"),
            class: Class::Order,
            order: Some(order),
        })
    }

    /// A valid body under the order_uid of an order sent before. With none
    /// sent yet, sends `fresh` first and the conflict right after it.
    fn conflict(&mut self, fresh: Order) -> Outgoing {
        self.n_conflicts += 1;
        let kind = RejectionKind::ConflictingDuplicate;
        let make = |original: &Order, rng: &mut StdRng, n: u64| Outgoing {
            msg_id: format!("{}-conflict-{n}", original.order_uid),
            body: invalid_message(kind, original, usize::MAX, rng),
            class: Class::Invalid(kind),
            order: None,
        };
        if self.recent_orders.is_empty() {
            self.queued = Some(make(&fresh, &mut self.rng, self.n_conflicts));
            return Outgoing {
                msg_id: fresh.order_uid.clone(),
                body: serde_json::to_vec(&fresh).expect("an order serialises"),
                class: Class::Order,
                order: Some(fresh),
            };
        }
        let index = self.rng.random_range(0..self.recent_orders.len());
        let original = self.recent_orders[index].clone();
        make(&original, &mut self.rng, self.n_conflicts)
    }

    /// Remembers a message about to be sent: counts it, and keeps recent
    /// orders for later duplicates and conflicts.
    fn remember(&mut self, message: &Outgoing) {
        match message.class {
            Class::Invalid(_) => self.n_invalid += 1,
            Class::Duplicate => self.n_duplicates += 1,
            Class::Order | Class::Document => {}
        }
        let Some(order) = &message.order else { return };
        if self.duplicates > 0.0 {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent
                .push_back((message.msg_id.clone(), message.body.clone()));
        }
        if self.kinds.contains(&RejectionKind::ConflictingDuplicate) && self.invalid > 0.0 {
            if self.recent_orders.len() == RECENT {
                self.recent_orders.pop_front();
            }
            self.recent_orders.push_back(order.clone());
        }
    }
}

/// A header value must not break the header block.
fn uid_is_header_safe(uid: &str) -> bool {
    !uid.is_empty() && uid.len() <= 256 && uid.bytes().all(|b| b.is_ascii_graphic())
}

/// The progress bar on a terminal, plain lines every few seconds elsewhere.
struct Progress {
    bar: Option<ProgressBar>,
    every_message: bool,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    fn new(count: Count, every_message: bool) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match count {
                Count::Messages(n) => ProgressBar::new(n),
                Count::Forever => ProgressBar::new_spinner(),
            };
            bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
            let template = match count {
                Count::Messages(_) => {
                    "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} confirmed, {per_sec} {msg}"
                }
                Count::Forever => "{spinner} {elapsed_precise} {pos} confirmed, {per_sec} {msg}",
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar
        });
        let now = Instant::now();
        Progress {
            bar,
            every_message,
            started: now,
            last_line: now,
        }
    }

    fn tick(&mut self, counts: &Counts, in_flight: usize) {
        if let Some(bar) = &self.bar {
            bar.set_position(counts.confirmed);
            bar.set_message(format!("({in_flight} in flight)"));
            return;
        }
        if self.last_line.elapsed() >= Duration::from_secs(5) {
            self.last_line = Instant::now();
            let seconds = self.started.elapsed().as_secs_f64();
            eprintln!(
                "pusher: {:.0}s sent {} confirmed {} in flight {} ({:.0}/s)",
                seconds,
                counts.sent,
                counts.confirmed,
                in_flight,
                counts.confirmed as f64 / seconds
            );
        }
    }

    /// A line about one message, shown only in --interval mode.
    fn note(&self, line: &str) {
        if !self.every_message && !line.starts_with("skipped") {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(format!("pusher: {line}")),
            None => eprintln!("pusher: {line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[derive(serde::Serialize)]
struct Summary {
    #[serde(flatten)]
    counts: Counts,
    /// Invalid messages sent (they are confirmed like any other).
    invalid: u64,
    /// Duplicates sent on purpose (--duplicates).
    duplicates_sent: u64,
    /// Messages not sent because they were over the server's max_payload.
    skipped: u64,
    /// Messages still unconfirmed after --drain-timeout (part of `failed`).
    unconfirmed: u64,
    seed: u64,
    elapsed_seconds: f64,
    publish_seconds: f64,
    confirmed_per_second: f64,
    last_error: Option<String>,
}

impl Summary {
    fn print(&self, json: bool) {
        if json {
            println!(
                "{}",
                serde_json::to_string(self).expect("a summary serialises")
            );
            return;
        }
        let c = &self.counts;
        println!(
            "sent {} messages ({} invalid, {} duplicates on purpose) in {:.2} s (seed {})",
            c.sent, self.invalid, self.duplicates_sent, self.elapsed_seconds, self.seed
        );
        println!(
            "confirmed {} ({:.0}/s), duplicates reported by the server {}, retries {}, failed {}, skipped {}",
            c.confirmed, self.confirmed_per_second, c.duplicates, c.retries, c.failed, self.skipped
        );
        if let Some(error) = &self.last_error {
            println!("last error from the server: {error}");
        }
    }
}

fn read_documents(paths: &[PathBuf]) -> Result<Option<Vec<Document>>, String> {
    if paths.is_empty() {
        return Ok(None);
    }
    let mut documents = Vec::new();
    for path in paths {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        documents.extend(split_documents(&bytes));
    }
    Ok(Some(documents))
}

fn parse_count(text: &str) -> Result<Count, String> {
    match text {
        "forever" | "inf" | "unlimited" => Ok(Count::Forever),
        _ => text
            .parse()
            .map(Count::Messages)
            .map_err(|_| format!("expected a number of messages or `forever`, found {text:?}")),
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    if text == "unlimited" {
        return Ok(f64::INFINITY);
    }
    match text.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(rate),
        _ => Err(format!(
            "expected messages per second (> 0) or `unlimited`, found {text:?}"
        )),
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

fn parse_kind_choice(text: &str) -> Result<KindChoice, String> {
    if text == "all" {
        return Ok(KindChoice::All);
    }
    parse_invalid_kind(text).map(KindChoice::One)
}

/// `MIN..MAX` (inclusive), `MIN..=MAX` or `N`; at least 1 item.
fn parse_items(text: &str) -> Result<RangeInclusive<usize>, String> {
    let bad = || format!("expected MIN..MAX items (1 or more), found {text:?}");
    let (min, max) = match text.split_once("..") {
        Some((min, max)) => (min, max.trim_start_matches('=')),
        None => (text, text),
    };
    let min: usize = min.trim().parse().map_err(|_| bad())?;
    let max: usize = max.trim().parse().map_err(|_| bad())?;
    if min == 0 || max < min {
        return Err(bad());
    }
    Ok(min..=max)
}

/// `20s`, `500ms`, `2m`, `1h`, or a number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("expected a duration like 20s, 500ms, 2m, found {text:?}");
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        assert_eq!(parse_items("2..7"), Ok(2..=7));
        assert_eq!(parse_items("2..=7"), Ok(2..=7));
        assert_eq!(parse_items("3"), Ok(3..=3));
        assert!(parse_items("0..3").is_err());
        assert!(parse_items("5..2").is_err());
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(matches!(parse_count("forever"), Ok(Count::Forever)));
        assert!(matches!(parse_count("10"), Ok(Count::Messages(10))));
        assert!(parse_fraction("1.5").is_err());
        assert!(parse_rate("0").is_err());
        assert!(matches!(
            parse_kind_choice("too_deep"),
            Ok(KindChoice::One(RejectionKind::TooDeep))
        ));
        assert!(parse_kind_choice("bogus").is_err());
    }

    #[test]
    fn help_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
