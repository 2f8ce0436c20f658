//! The two ingest threads. The consumer thread fetches batches from
//! JetStream and validates each message; the writer thread commits each batch
//! to PostgreSQL and only then acks it. A bounded channel between them gives
//! backpressure from the database to fetching.
//!
//! Invariants: a message is acked only after the transaction that stored it
//! (or its dead letter) committed; a transient failure acks nothing and
//! retries the same batch; one bad row never fails its neighbours.

#![allow(deprecated)] // nats 0.26's sync API

mod plan;
mod writer;

pub use writer::run_writer;

/// Writer threads, each with its own PostgreSQL connection, sharing the
/// consumer's channel. With one, PostgreSQL sat idle while the writer
/// waited for its COMMIT, acked and took the next batch; with two, one
/// writer's batch is being inserted while the other commits and acks.
pub const WRITERS: usize = 2;

use crate::broker::{self, Fetcher};
use crate::health::{Health, Part};
use crate::lifecycle::{self, Backoff, Retry, Shutdown, ThreadResult};
use crate::metrics::Metrics;
use crate::nats_auth::{ConnectError, NatsTarget};
use crate::order::{self, Rejection};
use crate::stream;
use crossbeam_channel::Sender;
use nats::jetstream::{AckKind, JetStream};
use nats::Message;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// One fetched message and what validation made of it.
pub struct Incoming {
    message: Message,
    stream_sequence: Option<crate::store::Position>,
    verdict: Verdict,
}

pub enum Verdict {
    /// The order's text, moved out of the message (it is not needed twice).
    Valid {
        uid: String,
        json: String,
    },
    Rejected(Rejection),
}

impl Incoming {
    /// The message's bytes (a valid order's were moved into its verdict).
    fn payload(&self) -> &[u8] {
        match &self.verdict {
            Verdict::Valid { json, .. } => json.as_bytes(),
            Verdict::Rejected(_) => &self.message.data,
        }
    }

    /// A valid order's uid, for the `order_uid` field of a log line.
    fn uid(&self) -> Option<&str> {
        match &self.verdict {
            Verdict::Valid { uid, .. } => Some(uid),
            Verdict::Rejected(_) => None,
        }
    }
}

pub type Batch = Vec<Incoming>;

/// The consumer thread's parts: what it fetches from and how it judges.
pub struct Consumer {
    js: JetStream,
    names: stream::Names,
    fetcher: Fetcher,
    max_message_bytes: usize,
    acks: broker::AckFlusher,
}

impl Consumer {
    /// Connects to NATS (waiting until `deadline` for it to answer), creates
    /// the stream and the durable consumer if missing, and binds to it.
    pub fn start(
        nats: &NatsTarget,
        names: stream::Names,
        batch: usize,
        max_message_bytes: usize,
        deadline: Instant,
        shutdown: &Shutdown,
    ) -> Result<Consumer, String> {
        let what = format!("NATS at {}", nats.display());
        let connection = lifecycle::wait_for_server(
            &what,
            "is nats-server running with JetStream (-js)? `make services` starts one",
            deadline,
            shutdown,
            || {
                broker::connect(nats).map_err(|err| match err {
                    ConnectError::Permanent(message) => Retry::Never(message),
                    // The text names the server already; `what` says it once.
                    ConnectError::Transient(text) => Retry::Later(
                        text.strip_prefix(&format!("{what}: "))
                            .unwrap_or(&text)
                            .to_owned(),
                    ),
                })
            },
        )?;
        let acks = broker::AckFlusher::new(&connection);
        let js = nats::jetstream::new(connection);
        broker::ensure_stream_and_consumer(&js, &names)
            .and_then(|()| Fetcher::bind(&js, &names, batch))
            .map(|fetcher| Consumer {
                js,
                names: names.clone(),
                fetcher,
                max_message_bytes,
                acks,
            })
            .map_err(|e| {
                format!(
                    "JetStream stream {} / consumer {}: {e}",
                    names.stream, names.consumer
                )
            })
    }
}

impl Consumer {
    /// Flushes acks on the consumer's connection; `main` keeps one to call
    /// after the writer has ended.
    pub fn ack_flusher(&self) -> broker::AckFlusher {
        self.acks.clone()
    }
}

/// The consumer thread: fetch, validate, hand on. It stops fetching while the
/// writer cannot reach PostgreSQL, so messages wait in the stream rather
/// than pile up here. Ends on shutdown by dropping `to_writer`, which lets the
/// writer finish what it holds.
pub fn run_consumer(
    consumer: Consumer,
    to_writer: Sender<Batch>,
    shutdown: Shutdown,
    health: &Health,
    metrics: &Metrics,
) -> ThreadResult {
    let Consumer {
        js,
        names,
        mut fetcher,
        max_message_bytes,
        acks: _,
    } = consumer;
    // Consumer::start got answers from JetStream, so it is up.
    health.set(Part::Nats, Ok(()));
    let mut backoff = Backoff::default();
    let mut failures = 0u32;
    while !shutdown.is_requested() {
        if !health.is_ok(Part::Writer) {
            // No new pull while PostgreSQL is away; what the open one still
            // delivers goes to the writer, which keeps it alive with progress
            // acks, instead of expiring unread and being redelivered.
            hand_on(fetcher.finish(), max_message_bytes, &to_writer, metrics)?;
            shutdown.sleep(Duration::from_millis(200));
            continue;
        }
        let started = Instant::now();
        match fetcher.next_batch() {
            Ok(messages) => {
                if health.set(Part::Nats, Ok(())) {
                    log::info!("JetStream consumer {} is fetching", names.consumer);
                }
                backoff.reset();
                failures = 0;
                hand_on(messages, max_message_bytes, &to_writer, metrics)?;
            }
            Err(err) => {
                failures += 1;
                // One pull left unanswered happens while a cluster elects a
                // new consumer leader; two in a row (about 4 s) is an outage.
                if failures >= 2 && health.set(Part::Nats, Err(err.to_string())) {
                    log::warn!("JetStream: {err}; retrying");
                } else {
                    log::debug!("JetStream: {err}; retrying");
                }
                if failures % 5 == 0 {
                    // The stream or consumer may have been deleted, or the
                    // server restarted without its state.
                    if let Err(err) = broker::ensure_stream_and_consumer(&js, &names) {
                        log::debug!("re-creating stream and consumer: {err}");
                    }
                }
                // A failed subscription answers every later read with the
                // same error: bind a new one (at the backoff's pace, with
                // `/readyz` naming NATS meanwhile) instead of failing forever.
                // Only then: a working subscription is never replaced, since
                // messages the server still sends to the old inbox (for pull
                // requests it queued while silent) would wait out ack_wait.
                if fetcher.is_broken() {
                    match fetcher.rebind(&js, &names) {
                        Ok(()) => {
                            log::info!("JetStream: bound to consumer {} again", names.consumer)
                        }
                        Err(err) => log::debug!("re-binding to consumer {}: {err}", names.consumer),
                    }
                }
                shutdown.sleep(backoff.wait_after(started));
            }
        }
    }
    let last = fetcher.finish();
    log::info!(
        "consumer stopped fetching ({} more from the last pull)",
        last.len()
    );
    hand_on(last, max_message_bytes, &to_writer, metrics)
}

fn hand_on(
    messages: Vec<Message>,
    max_message_bytes: usize,
    to_writer: &Sender<Batch>,
    metrics: &Metrics,
) -> ThreadResult {
    if messages.is_empty() {
        return Ok(());
    }
    metrics
        .messages_received
        .fetch_add(messages.len() as u64, Relaxed);
    let batch = messages
        .into_iter()
        .map(|message| judge(message, max_message_bytes))
        .collect();
    to_writer
        .send(batch)
        .map_err(|_| "the writer thread is gone".to_owned())
}

/// Validates one message. Its delivery count plays no part: a valid order
/// on its last allowed delivery is stored like any other (if PostgreSQL
/// refuses it, it is dead-lettered as `database_rejected`), and an invalid
/// message is dead-lettered with its own kind on whichever delivery.
fn judge(mut message: Message, max_message_bytes: usize) -> Incoming {
    let stream_sequence = broker::stream_sequence(&message);
    let verdict = match order::validate(&message.data, max_message_bytes) {
        Ok(order) => {
            let uid = order.uid.as_str().to_owned();
            // Validation proved the bytes UTF-8: the lossy path never runs.
            let bytes = std::mem::take(&mut message.data);
            let json = String::from_utf8(bytes)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
            Verdict::Valid { uid, json }
        }
        Err(rejection) => Verdict::Rejected(rejection),
    };
    Incoming {
        message,
        stream_sequence,
        verdict,
    }
}

/// Acks are fire-and-forget: one lost on the way means a redelivery, which
/// the idempotent insert absorbs.
fn ack(message: &Message, kind: AckKind) {
    if let Err(err) = message.ack_kind(kind) {
        log::debug!("ack {kind:?} failed: {err}");
    }
}

fn sequence(stream_sequence: Option<crate::store::Position>) -> String {
    stream_sequence.map_or("?".into(), |s| s.to_string())
}
