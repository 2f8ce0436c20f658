//! The writer thread: commits each batch, then acks it. It does the I/O
//! alone; every decision (which part to write, how to split a refused one,
//! which ack each message gets, when progress acks go out) is `plan`'s.

use super::plan::{ProgressAcks, Refusal, Rows, Settled, Storing};
use super::{ack, sequence, Batch, Incoming};
use crate::health::{Health, Part};
use crate::lifecycle::{Backoff, Shutdown, ThreadResult};
use crate::metrics::Metrics;
use crate::order::RejectionKind;
use crate::store::{self, Database, StoreError, Writer};
use crossbeam_channel::Receiver;
use nats::jetstream::AckKind;
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// The writer thread. Ends when the consumer drops its sender and every
/// batch it sent is stored, or on shutdown while PostgreSQL is down (leaving
/// that batch unacked, to be redelivered).
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
        progress: ProgressAcks::for_ack_wait(ack_wait),
        writer: None,
        attempt_started: Instant::now(),
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
    /// When the last connect or commit began; the backoff spaces these.
    attempt_started: Instant,
    backoff: Backoff,
    shutdown: Shutdown,
    health: &'a Health,
    metrics: &'a Metrics,
    from_consumer: Receiver<Batch>,
    progress: ProgressAcks,
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

    /// The writer's connection, connecting unless connected; records the
    /// outcome in `Health`.
    fn connect(&mut self) -> Option<&mut Writer> {
        if self.writer.as_ref().is_none_or(Writer::is_closed) {
            self.attempt_started = Instant::now();
            match Writer::connect(&self.database) {
                Ok(writer) => {
                    self.writer = Some(writer);
                    if self.health.set(Part::Writer, Ok(())) {
                        log::info!(
                            "writer connected to PostgreSQL at {}",
                            self.database.display
                        );
                    }
                }
                Err(err) => {
                    self.writer = None;
                    self.unavailable(store::describe(&err));
                }
            }
        }
        self.writer.as_mut()
    }

    fn unavailable(&self, why: String) {
        if self
            .health
            .set(Part::Writer, Err(format!("PostgreSQL: {why}")))
        {
            log::warn!("writer: PostgreSQL unavailable ({why}); holding the batch and retrying");
        }
    }

    /// Stores `batch` part by part and acks each part once it committed,
    /// retrying the same part through transient failures.
    fn store(&mut self, batch: &[Incoming]) -> Result<(), Interrupted> {
        let mut storing = Storing::new(batch.len());
        while let Some(part) = storing.current().cloned() {
            let rows = Rows::of(batch, &part);
            let Some(writer) = self.connect() else {
                self.wait(batch)?;
                continue;
            };
            let started = Instant::now();
            let written = writer.write_batch(&rows.orders, &rows.dead);
            self.attempt_started = started;
            match written {
                Ok(outcomes) => {
                    let took = started.elapsed();
                    self.metrics.ingest_commit_duration.observe(took);
                    self.backoff.reset();
                    self.metrics.batches_committed.fetch_add(1, Relaxed);
                    for (index, settled) in rows.settled(&part, &outcomes) {
                        self.settle(&batch[index], settled);
                    }
                    for letter in &rows.dead {
                        log::info!(
                            stream_sequence = letter.stream_sequence,
                            kind = letter.kind.label();
                            "dead-lettered message {}: {}",
                            sequence(letter.stream_sequence),
                            letter.reason
                        );
                    }
                    storing.committed();
                }
                Err(StoreError::Transient(err)) => {
                    self.writer = None;
                    self.metrics.store_retries.fetch_add(1, Relaxed);
                    self.unavailable(store::describe(&err));
                    self.wait(batch)?;
                }
                Err(StoreError::Data(err)) => {
                    let why = store::describe(&err);
                    match storing.refused(why.clone(), |i| batch[i].payload().len()) {
                        Refusal::Split => {}
                        Refusal::DeadLetter => {
                            let refused = &batch[part.range.start];
                            log::warn!(
                                stream_sequence = refused.stream_sequence,
                                order_uid = refused.uid();
                                "PostgreSQL refused a message: {why}"
                            );
                        }
                        Refusal::Reduced => {
                            let refused = &batch[part.range.start];
                            log::warn!(
                                stream_sequence = refused.stream_sequence;
                                "PostgreSQL refused a dead letter ({why}); keeping it without its payload"
                            );
                        }
                        Refusal::GiveUp { index } => {
                            log::error!(
                                stream_sequence = batch[index].stream_sequence;
                                "reduced dead letter refused too ({why}); terminating message {}",
                                sequence(batch[index].stream_sequence)
                            );
                            ack(&batch[index].message, AckKind::Term);
                            storing.committed();
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Counts what became of a message and acks it accordingly.
    fn settle(&self, incoming: &Incoming, settled: Settled) {
        let metrics = self.metrics;
        match settled {
            Settled::Stored => metrics.orders_stored.fetch_add(1, Relaxed),
            Settled::Duplicate => metrics.duplicates.fetch_add(1, Relaxed),
            Settled::DeadLettered(kind) => {
                // Those of `Rows::dead` are logged with their reason; a
                // conflict is found by the commit itself.
                if kind == RejectionKind::ConflictingDuplicate {
                    log::info!(
                        stream_sequence = incoming.stream_sequence,
                        order_uid = incoming.uid(),
                        kind = kind.label();
                        "dead-lettered message {}: conflicting duplicate",
                        sequence(incoming.stream_sequence)
                    );
                }
                metrics.rejected(kind);
                0
            }
        };
        ack(&incoming.message, settled.ack_kind());
    }

    /// Backs off while keeping the held batch, and those queued behind it,
    /// alive on the server (no redelivery elsewhere after `ack_wait`).
    fn wait(&mut self, batch: &[Incoming]) -> Result<(), Interrupted> {
        let until = self.backoff.retry_at(self.attempt_started);
        loop {
            self.queued.extend(self.from_consumer.try_iter());
            for incoming in batch.iter().chain(self.queued.iter().flatten()) {
                ack(&incoming.message, AckKind::Progress);
            }
            let Some(sleep) = self.progress.sleep_after_round(Instant::now(), until) else {
                return Ok(());
            };
            if self.shutdown.sleep(sleep) {
                return Err(Interrupted);
            }
        }
    }
}
