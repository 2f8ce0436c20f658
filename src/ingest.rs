//! The two ingest threads. The consumer thread fetches batches from
//! JetStream and validates each message; the writer thread commits each batch
//! to PostgreSQL and only then acks it. A bounded channel between them gives
//! backpressure from the database to fetching.
//!
//! Invariants: a message is acked only after the transaction that stored it
//! (or its dead letter) committed; a transient failure acks nothing and
//! retries the same batch; one bad row never fails its neighbours.

#![allow(deprecated)] // nats 0.26's sync API

use crate::broker::{self, Fetcher};
use crate::health::{Health, Part};
use crate::lifecycle::{Backoff, Shutdown, ThreadResult};
use crate::metrics::Metrics;
use crate::order::{self, Rejection, RejectionKind};
use crate::store::{self, Database, DeadLetter, NewOrder, Outcome, StoreError, Writer};
use crossbeam_channel::{Receiver, Sender};
use nats::jetstream::{AckKind, JetStream};
use nats::Message;
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// One fetched message and what validation made of it.
pub struct Incoming {
    pub message: Message,
    pub stream_sequence: Option<u64>,
    pub verdict: Verdict,
}

pub enum Verdict {
    /// The order's text, moved out of the message (it is not needed twice).
    Valid {
        uid: String,
        json: String,
    },
    Rejected(Rejection),
}

pub type Batch = Vec<Incoming>;

/// The consumer thread's parts: what it fetches from and how it judges.
pub struct Consumer {
    pub js: JetStream,
    pub names: broker::Names,
    pub fetcher: Fetcher,
    pub max_message_bytes: usize,
    pub acks: broker::AckFlusher,
}

impl Consumer {
    /// Connects to NATS (waiting until `deadline` for it to answer), creates
    /// the stream and the durable consumer if missing, and binds to it.
    pub fn start(
        urls: &str,
        names: broker::Names,
        batch: usize,
        max_message_bytes: usize,
        deadline: Instant,
        shutdown: &Shutdown,
    ) -> Result<Consumer, String> {
        let mut waiting = false;
        let connection = loop {
            let err = match broker::connect(urls) {
                Ok(connection) => break connection,
                Err(err) => err,
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "cannot connect to NATS at {urls} ({err}): is nats-server running with \
                     JetStream (-js)? `make services` starts one"
                ));
            }
            if !waiting {
                log::warn!("waiting for NATS at {urls} ({err})");
                waiting = true;
            }
            if shutdown.sleep(Duration::from_millis(500)) {
                return Err("interrupted while waiting for NATS".into());
            }
        };
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
                shutdown.sleep(backoff.next_delay());
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

/// Validates one message. On its last allowed delivery a message is
/// dead-lettered whatever it holds, so JetStream never drops it silently.
fn judge(mut message: Message, max_message_bytes: usize) -> Incoming {
    let (stream_sequence, delivered) = broker::delivery_info(&message);
    let verdict = if delivered >= broker::MAX_DELIVER {
        Verdict::Rejected(Rejection::new(
            RejectionKind::RedeliveryLimit,
            format!("delivered {delivered} times without being stored"),
        ))
    } else {
        match order::validate(&message.data, max_message_bytes) {
            Ok(order) => {
                let uid = order.uid.as_str().to_owned();
                // Validation proved the bytes UTF-8: the lossy path never runs.
                let bytes = std::mem::take(&mut message.data);
                let json = String::from_utf8(bytes)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                Verdict::Valid { uid, json }
            }
            Err(rejection) => Verdict::Rejected(rejection),
        }
    };
    Incoming {
        message,
        stream_sequence,
        verdict,
    }
}

/// The writer thread: commits each batch, then acks it. Ends when the
/// consumer drops its sender and every batch it sent is stored, or on
/// shutdown while PostgreSQL is down (leaving that batch unacked, to be
/// redelivered).
pub fn run_writer(
    database: Database,
    from_consumer: Receiver<Batch>,
    ack_wait: Duration,
    shutdown: Shutdown,
    health: &Health,
    metrics: &Metrics,
) -> ThreadResult {
    let mut writer = WriterState {
        database,
        // Three progress acks per ack_wait: one late or lost still leaves
        // time for the next.
        progress_every: ack_wait / 3,
        writer: None,
        backoff: Backoff::default(),
        shutdown,
        health,
        metrics,
        from_consumer,
        queued: VecDeque::new(),
    };
    writer.connect();
    while let Some(batch) = writer.next_batch() {
        if writer.store(&batch).is_err() {
            let unstored = batch.len() + writer.queued.iter().map(Vec::len).sum::<usize>();
            log::warn!("shutting down with {unstored} messages unstored; they will be redelivered");
            return Ok(());
        }
    }
    log::info!("writer stored every batch it was given");
    Ok(())
}

/// Shutdown began while PostgreSQL was unavailable.
struct Interrupted;

struct WriterState<'a> {
    database: Database,
    writer: Option<Writer>,
    backoff: Backoff,
    shutdown: Shutdown,
    health: &'a Health,
    metrics: &'a Metrics,
    from_consumer: Receiver<Batch>,
    progress_every: Duration,
    /// Batches taken off the channel while the one in hand waits for
    /// PostgreSQL, so that they too get progress acks.
    queued: VecDeque<Batch>,
}

impl WriterState<'_> {
    /// The next batch to store; `None` once the consumer has ended and
    /// everything it sent is stored.
    fn next_batch(&mut self) -> Option<Batch> {
        self.queued
            .pop_front()
            .or_else(|| self.from_consumer.recv().ok())
    }

    /// Connects unless connected; records the outcome in `Health`.
    fn connect(&mut self) -> bool {
        if self.writer.as_ref().is_some_and(|w| !w.is_closed()) {
            return true;
        }
        match Writer::connect(&self.database) {
            Ok(writer) => {
                self.writer = Some(writer);
                if self.health.set(Part::Writer, Ok(())) {
                    log::info!(
                        "writer connected to PostgreSQL at {}",
                        self.database.display
                    );
                }
                true
            }
            Err(err) => {
                self.writer = None;
                self.unavailable(store::describe(&err));
                false
            }
        }
    }

    fn unavailable(&self, why: String) {
        if self
            .health
            .set(Part::Writer, Err(format!("PostgreSQL: {why}")))
        {
            log::warn!("writer: PostgreSQL unavailable ({why}); holding the batch and retrying");
        }
    }

    /// Stores `batch` and acks it, retrying through transient failures and
    /// splitting it when PostgreSQL refuses one of its rows.
    fn store(&mut self, batch: &[Incoming]) -> Result<(), Interrupted> {
        self.store_with(batch, &[])
    }

    /// `refused` marks messages PostgreSQL rejected on their own: they are
    /// dead-lettered with the server's reason instead of inserted.
    fn store_with(
        &mut self,
        batch: &[Incoming],
        refused: &[Option<String>],
    ) -> Result<(), Interrupted> {
        loop {
            if !self.connect() {
                self.wait(batch)?;
                continue;
            }
            let Some(writer) = self.writer.as_mut() else {
                continue;
            };
            let (orders, positions, dead) = split(batch, refused);
            let started = Instant::now();
            match writer.write_batch(&orders, &dead) {
                Ok(outcomes) => {
                    self.metrics
                        .ingest_commit_duration
                        .observe(started.elapsed());
                    self.backoff.reset();
                    self.acknowledge(batch, &positions, &outcomes, &dead);
                    return Ok(());
                }
                Err(StoreError::Transient(err)) => {
                    self.writer = None;
                    self.metrics.store_retries.fetch_add(1, Relaxed);
                    self.unavailable(store::describe(&err));
                    self.wait(batch)?;
                }
                Err(StoreError::Data(err)) if batch.len() == 1 => {
                    log::warn!(
                        stream_sequence = batch[0].stream_sequence,
                        order_uid = order_uid(&batch[0]);
                        "PostgreSQL refused a message: {}",
                        store::describe(&err)
                    );
                    if !refused.is_empty() {
                        // Even its dead letter was refused: nothing more can be done.
                        log::error!(
                            stream_sequence = batch[0].stream_sequence;
                            "dead letter refused too; terminating message {:?}",
                            batch[0].stream_sequence
                        );
                        ack(&batch[0].message, AckKind::Term);
                        return Ok(());
                    }
                    return self.store_with(batch, &[Some(store::describe(&err))]);
                }
                Err(StoreError::Data(_)) => {
                    let (left, right) = batch.split_at(batch.len() / 2);
                    self.store_with(left, &[])?;
                    return self.store_with(right, &[]);
                }
            }
        }
    }

    /// Backs off while keeping the held batch, and those queued behind it,
    /// alive on the server (no redelivery elsewhere after `ack_wait`).
    /// The progress acks go out at least every `progress_every`, however
    /// long the backoff has grown.
    fn wait(&mut self, batch: &[Incoming]) -> Result<(), Interrupted> {
        let until = Instant::now() + self.backoff.next_delay();
        loop {
            self.queued.extend(self.from_consumer.try_iter());
            for incoming in batch.iter().chain(self.queued.iter().flatten()) {
                ack(&incoming.message, AckKind::Progress);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            if self.shutdown.sleep(left.min(self.progress_every)) {
                return Err(Interrupted);
            }
        }
    }

    fn acknowledge(
        &self,
        batch: &[Incoming],
        positions: &[usize],
        outcomes: &[Outcome],
        dead: &[DeadLetter<'_>],
    ) {
        let metrics = self.metrics;
        metrics.batches_committed.fetch_add(1, Relaxed);
        let mut outcome_of = vec![None; batch.len()];
        for (position, outcome) in positions.iter().zip(outcomes) {
            outcome_of[*position] = Some(*outcome);
        }
        for (incoming, outcome) in batch.iter().zip(outcome_of) {
            let kind = match outcome {
                Some(Outcome::Stored) => {
                    metrics.orders_stored.fetch_add(1, Relaxed);
                    AckKind::Ack
                }
                Some(Outcome::Duplicate) => {
                    metrics.duplicates.fetch_add(1, Relaxed);
                    AckKind::Ack
                }
                Some(Outcome::Conflict) => {
                    metrics.rejected(RejectionKind::ConflictingDuplicate);
                    log::info!(
                        stream_sequence = incoming.stream_sequence,
                        order_uid = order_uid(incoming),
                        kind = RejectionKind::ConflictingDuplicate.label();
                        "dead-lettered message {}: conflicting duplicate",
                        sequence(incoming.stream_sequence)
                    );
                    AckKind::Term
                }
                None => AckKind::Term,
            };
            ack(&incoming.message, kind);
        }
        for letter in dead {
            metrics.rejected(letter.kind);
            log::info!(
                stream_sequence = letter.stream_sequence,
                kind = letter.kind.label();
                "dead-lettered message {}: {}",
                sequence(letter.stream_sequence),
                letter.reason
            );
        }
    }
}

/// Splits a batch into the orders to insert (with their positions in the
/// batch) and the dead letters to record.
fn split<'b>(
    batch: &'b [Incoming],
    refused: &'b [Option<String>],
) -> (Vec<NewOrder<'b>>, Vec<usize>, Vec<DeadLetter<'b>>) {
    let mut orders = Vec::with_capacity(batch.len());
    let mut positions = Vec::with_capacity(batch.len());
    let mut dead = Vec::new();
    for (position, incoming) in batch.iter().enumerate() {
        let refusal = refused.get(position).and_then(Option::as_deref);
        match (&incoming.verdict, refusal) {
            (Verdict::Valid { json, .. }, Some(why)) => dead.push(DeadLetter {
                kind: RejectionKind::DatabaseRejected,
                reason: why,
                stream_sequence: incoming.stream_sequence,
                payload: json.as_bytes(),
            }),
            (Verdict::Valid { uid, json }, None) => {
                orders.push(NewOrder {
                    uid,
                    json,
                    stream_sequence: incoming.stream_sequence,
                });
                positions.push(position);
            }
            (Verdict::Rejected(rejection), _) => dead.push(DeadLetter {
                kind: rejection.kind,
                reason: &rejection.reason,
                stream_sequence: incoming.stream_sequence,
                payload: &incoming.message.data,
            }),
        }
    }
    (orders, positions, dead)
}

/// Acks are fire-and-forget: one lost on the way means a redelivery, which
/// the idempotent insert absorbs.
fn ack(message: &Message, kind: AckKind) {
    if let Err(err) = message.ack_kind(kind) {
        log::debug!("ack {kind:?} failed: {err}");
    }
}

/// A valid order's uid, for a log line's `order_uid` field.
fn order_uid(incoming: &Incoming) -> Option<&str> {
    match &incoming.verdict {
        Verdict::Valid { uid, .. } => Some(uid),
        Verdict::Rejected(_) => None,
    }
}

fn sequence(stream_sequence: Option<u64>) -> String {
    stream_sequence.map_or("?".into(), |s| s.to_string())
}
