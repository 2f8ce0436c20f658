//! The writer's decisions, without I/O: which part of a batch to write next,
//! how a refused part is split until the culprit is alone, what each
//! message's ack is once its part committed, and when progress acks go out
//! while the writer backs off. The writer thread (`writer.rs`) only does
//! what these say.

use super::{Incoming, Verdict};
use crate::order::RejectionKind;
use crate::store::{DeadLetter, NewOrder, Outcome};
use nats::jetstream::AckKind;
use std::ops::Range;
use std::time::{Duration, Instant};

/// The parts of one batch still to store, the next one last. A batch
/// starts as one part; PostgreSQL refusing a part's data halves it, so one
/// bad row costs `log2(batch)` extra transactions and never fails its
/// neighbours.
#[derive(Debug)]
pub struct Storing {
    parts: Vec<Part>,
}

/// A run of messages written in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub range: Range<usize>,
    pub write: Write,
}

/// How a part's messages are written. Each refusal of a lone message moves
/// it one step down, so nothing is lost to a row PostgreSQL will not take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// As judged: orders inserted, invalid messages dead-lettered.
    AsJudged,
    /// PostgreSQL refused it (the reason): dead-lettered with its payload.
    DeadLetter(String),
    /// Its dead letter was refused too: dead-lettered without the payload,
    /// with this reason.
    Reduced(String),
}

/// What to do after PostgreSQL refused the data of the current part.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Halved: write each half in turn.
    Split,
    /// The culprit is alone: write it again, as a dead letter.
    DeadLetter,
    /// Its dead letter was refused: write it again without the payload.
    Reduced,
    /// Even its reduced dead letter was refused: nothing more can be
    /// written for message `index`; it is `Term`'d.
    GiveUp { index: usize },
}

impl Storing {
    pub fn new(batch_len: usize) -> Storing {
        let parts = if batch_len == 0 {
            Vec::new()
        } else {
            vec![Part {
                range: 0..batch_len,
                write: Write::AsJudged,
            }]
        };
        Storing { parts }
    }

    /// The part to write next; `None` once the whole batch is settled.
    pub fn current(&self) -> Option<&Part> {
        self.parts.last()
    }

    /// The current part committed (or was given up on).
    pub fn committed(&mut self) {
        self.parts.pop();
    }

    /// PostgreSQL refused the current part's data with `why`;
    /// `payload_len(index)` is the length of a message's payload.
    pub fn refused(&mut self, why: String, payload_len: impl Fn(usize) -> usize) -> Refusal {
        let Some(part) = self.parts.pop() else {
            return Refusal::Split; // nothing in hand: nothing to do
        };
        let Range { start, end } = part.range;
        if end - start > 1 {
            let middle = start + (end - start) / 2;
            for range in [middle..end, start..middle] {
                self.parts.push(Part {
                    range,
                    write: Write::AsJudged,
                });
            }
            return Refusal::Split;
        }
        let (write, refusal) = match part.write {
            Write::AsJudged => (Write::DeadLetter(why), Refusal::DeadLetter),
            Write::DeadLetter(first) => {
                let reason = format!(
                    "{first}; as a dead letter: {why}; its {} bytes are not kept",
                    payload_len(start)
                );
                (Write::Reduced(reason), Refusal::Reduced)
            }
            Write::Reduced(_) => return Refusal::GiveUp { index: start },
        };
        self.parts.push(Part {
            range: part.range,
            write,
        });
        refusal
    }
}

/// What one part writes: the orders to insert, each with its message's
/// index in the batch, and the dead letters to record.
pub struct Rows<'b> {
    pub orders: Vec<NewOrder<'b>>,
    pub positions: Vec<usize>,
    pub dead: Vec<DeadLetter<'b>>,
}

impl<'b> Rows<'b> {
    pub fn of(batch: &'b [Incoming], part: &'b Part) -> Rows<'b> {
        let messages = &batch[part.range.clone()];
        let mut rows = Rows {
            orders: Vec::with_capacity(messages.len()),
            positions: Vec::with_capacity(messages.len()),
            dead: Vec::new(),
        };
        for (incoming, position) in messages.iter().zip(part.range.clone()) {
            let stream_sequence = incoming.stream_sequence;
            match (&incoming.verdict, &part.write) {
                (verdict, Write::Reduced(reason)) => rows.dead.push(DeadLetter {
                    kind: match verdict {
                        Verdict::Valid { .. } => RejectionKind::DatabaseRejected,
                        Verdict::Rejected(rejection) => rejection.kind,
                    },
                    reason,
                    stream_sequence,
                    payload: &[],
                    payload_length: incoming.payload().len(),
                }),
                (Verdict::Valid { json, .. }, Write::DeadLetter(why)) => {
                    rows.dead.push(DeadLetter {
                        kind: RejectionKind::DatabaseRejected,
                        reason: why,
                        stream_sequence,
                        payload: json.as_bytes(),
                        payload_length: json.len(),
                    })
                }
                (Verdict::Valid { uid, json }, Write::AsJudged) => {
                    rows.orders.push(NewOrder {
                        uid,
                        json,
                        stream_sequence,
                    });
                    rows.positions.push(position);
                }
                (Verdict::Rejected(rejection), _) => rows.dead.push(DeadLetter {
                    kind: rejection.kind,
                    reason: &rejection.reason,
                    stream_sequence,
                    payload: &incoming.message.data,
                    payload_length: incoming.message.data.len(),
                }),
            }
        }
        rows
    }

    /// How each message of `part` was settled by the commit that returned
    /// `outcomes` (one per order, in order), by batch index.
    pub fn settled(&self, part: &Part, outcomes: &[Outcome]) -> Vec<(usize, Settled)> {
        let mut settled: Vec<(usize, Settled)> = Vec::with_capacity(part.range.len());
        let mut orders = self.positions.iter().zip(outcomes).peekable();
        let mut dead = self.dead.iter();
        for index in part.range.clone() {
            let how = match orders.next_if(|(position, _)| **position == index) {
                Some((_, Outcome::Stored)) => Settled::Stored,
                Some((_, Outcome::Duplicate)) => Settled::Duplicate,
                Some((_, Outcome::Conflict)) => {
                    Settled::DeadLettered(RejectionKind::ConflictingDuplicate)
                }
                // Not an order: the next dead letter is this message's.
                None => Settled::DeadLettered(
                    dead.next()
                        .map_or(RejectionKind::DatabaseRejected, |d| d.kind),
                ),
            };
            settled.push((index, how));
        }
        settled
    }
}

/// What became of a message once its part committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Stored,
    /// The same order was already stored.
    Duplicate,
    /// Recorded in `rejected_messages` instead of stored.
    DeadLettered(RejectionKind),
}

impl Settled {
    /// Stored or duplicate: acked. A dead letter is recorded, so JetStream
    /// must never deliver it again: terminated.
    pub fn ack_kind(self) -> AckKind {
        match self {
            Settled::Stored | Settled::Duplicate => AckKind::Ack,
            Settled::DeadLettered(_) => AckKind::Term,
        }
    }
}

/// When the writer, backing off with batches in hand, sends them progress
/// acks: at once, then at least every third of `ack_wait` until the backoff
/// ends, however long it has grown. One late or lost still leaves time for
/// the next before JetStream would redeliver.
#[derive(Debug, Clone, Copy)]
pub struct ProgressAcks {
    every: Duration,
}

impl ProgressAcks {
    pub fn for_ack_wait(ack_wait: Duration) -> ProgressAcks {
        ProgressAcks {
            every: (ack_wait / 3).max(Duration::from_millis(1)),
        }
    }

    /// Having sent progress acks at `now`, how long to sleep before the next
    /// round; `None` when the backoff, which ends at `until`, is over.
    pub fn sleep_after_round(&self, now: Instant, until: Instant) -> Option<Duration> {
        let left = until.saturating_duration_since(now);
        (!left.is_zero()).then(|| left.min(self.every))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::Rejection;
    use nats::Message;

    fn valid(uid: &str) -> Incoming {
        Incoming {
            message: Message::new("orders", None, "", None),
            stream_sequence: Some(crate::store::Position {
                sequence: 1,
                published_us: 0,
            }),
            verdict: Verdict::Valid {
                uid: uid.into(),
                json: format!(r#"{{"order_uid":"{uid}"}}"#),
            },
        }
    }

    fn rejected(kind: RejectionKind) -> Incoming {
        Incoming {
            message: Message::new("orders", None, "junk", None),
            stream_sequence: Some(crate::store::Position {
                sequence: 2,
                published_us: 0,
            }),
            verdict: Verdict::Rejected(Rejection::new(kind, "bad".to_owned())),
        }
    }

    /// Plays a batch through `Storing` against a "database" that refuses
    /// any part holding `culprit` as an order (and, if `refuse_dead_letter`,
    /// as a dead letter too). Returns the parts written, in order.
    fn play(len: usize, culprit: usize, refuse_dead_letter: bool) -> (Vec<Part>, Vec<Refusal>) {
        let mut storing = Storing::new(len);
        let (mut written, mut refusals) = (Vec::new(), Vec::new());
        while let Some(part) = storing.current().cloned() {
            let refuses = part.range.contains(&culprit)
                && (part.write == Write::AsJudged || refuse_dead_letter);
            written.push(part);
            if refuses {
                let refusal = storing.refused("no".into(), |_| 17);
                let gave_up = matches!(refusal, Refusal::GiveUp { .. });
                refusals.push(refusal);
                if gave_up {
                    storing.committed();
                }
            } else {
                storing.committed();
            }
            assert!(written.len() < 4 * len + 4, "does not end: {written:?}");
        }
        (written, refusals)
    }

    #[test]
    fn a_refused_batch_is_halved_until_the_culprit_is_alone_then_dead_lettered() {
        let (written, refusals) = play(8, 5, false);
        let ranges: Vec<_> = written.iter().map(|p| p.range.clone()).collect();
        assert_eq!(ranges, [0..8, 0..4, 4..8, 4..6, 4..5, 5..6, 5..6, 6..8]);
        assert_eq!(written[6].write, Write::DeadLetter("no".into()));
        let rewritten = written.iter().filter(|p| p.write != Write::AsJudged);
        assert_eq!(rewritten.count(), 1);
        assert_eq!(refusals.last(), Some(&Refusal::DeadLetter));
        // Every message is in exactly one committed part.
        let mut covered = [0; 8];
        for part in written
            .iter()
            .filter(|p| !p.range.contains(&5) || p.write != Write::AsJudged)
        {
            for i in part.range.clone() {
                covered[i] += 1;
            }
        }
        assert_eq!(covered, [1; 8]);
    }

    #[test]
    fn a_refused_dead_letter_is_reduced_and_only_a_refused_reduction_given_up() {
        let (written, refusals) = play(1, 0, true);
        assert_eq!(
            refusals,
            [
                Refusal::DeadLetter,
                Refusal::Reduced,
                Refusal::GiveUp { index: 0 }
            ]
        );
        assert_eq!(
            written[2].write,
            Write::Reduced("no; as a dead letter: no; its 17 bytes are not kept".into())
        );
    }

    /// Issue 14: a dead letter PostgreSQL refuses used to be Term'd with no
    /// row. Its reduced form keeps kind, reason and sequence, not the payload.
    #[test]
    fn a_reduced_dead_letter_keeps_the_kind_and_drops_the_payload() {
        let batch = [valid("a"), rejected(RejectionKind::NotJson)];
        for (index, kind) in [
            (0, RejectionKind::DatabaseRejected),
            (1, RejectionKind::NotJson),
        ] {
            let part = Part {
                range: index..index + 1,
                write: Write::Reduced("why".into()),
            };
            let rows = Rows::of(&batch, &part);
            assert!(rows.orders.is_empty());
            assert_eq!(rows.dead.len(), 1);
            assert_eq!(rows.dead[0].kind, kind);
            assert_eq!(rows.dead[0].reason, "why");
            assert!(rows.dead[0].payload.is_empty());
            // The column holds the real length, not the 0 of what is kept.
            assert_eq!(rows.dead[0].payload_length, batch[index].payload().len());
            assert!(rows.dead[0].payload_length > 0);
            assert_eq!(
                rows.settled(&part, &[]),
                [(index, Settled::DeadLettered(kind))]
            );
        }
    }

    #[test]
    fn an_empty_batch_writes_nothing() {
        assert!(Storing::new(0).current().is_none());
    }

    #[test]
    fn rows_and_acks_follow_the_verdicts_and_the_outcomes() {
        let batch = [
            valid("a"),
            rejected(RejectionKind::NotJson),
            valid("b"),
            valid("c"),
        ];
        let part = Part {
            range: 0..4,
            write: Write::AsJudged,
        };
        let rows = Rows::of(&batch, &part);
        assert_eq!(rows.positions, [0, 2, 3]);
        assert_eq!(rows.dead.len(), 1);
        assert_eq!(rows.dead[0].payload, b"junk");
        let settled = rows.settled(
            &part,
            &[Outcome::Stored, Outcome::Duplicate, Outcome::Conflict],
        );
        assert_eq!(
            settled,
            [
                (0, Settled::Stored),
                (1, Settled::DeadLettered(RejectionKind::NotJson)),
                (2, Settled::Duplicate),
                (
                    3,
                    Settled::DeadLettered(RejectionKind::ConflictingDuplicate)
                ),
            ]
        );
        // AckKind has no PartialEq: compare what it prints.
        let kinds: Vec<_> = settled
            .iter()
            .map(|(_, s)| format!("{:?}", s.ack_kind()))
            .collect();
        assert_eq!(kinds, ["Ack", "Term", "Ack", "Term"]);
    }

    #[test]
    fn a_refused_order_becomes_a_database_rejected_dead_letter_with_its_body() {
        let batch = [valid("a"), valid("b")];
        let part = Part {
            range: 1..2,
            write: Write::DeadLetter("value too long".into()),
        };
        let rows = Rows::of(&batch, &part);
        assert!(rows.orders.is_empty());
        assert_eq!(rows.dead[0].kind, RejectionKind::DatabaseRejected);
        assert_eq!(rows.dead[0].reason, "value too long");
        assert_eq!(rows.dead[0].payload, br#"{"order_uid":"b"}"#);
        assert_eq!(
            rows.settled(&part, &[]),
            [(1, Settled::DeadLettered(RejectionKind::DatabaseRejected))]
        );
    }

    #[test]
    fn progress_acks_go_out_three_times_per_ack_wait_however_long_the_backoff() {
        let ack_wait = Duration::from_secs(30);
        let progress = ProgressAcks::for_ack_wait(ack_wait);
        for backoff in [Duration::from_millis(100), Duration::from_secs(100)] {
            let start = Instant::now();
            let until = start + backoff;
            let (mut now, mut rounds) = (start, vec![start]);
            while let Some(sleep) = progress.sleep_after_round(now, until) {
                assert!(sleep <= ack_wait / 3, "{sleep:?}");
                now += sleep;
                rounds.push(now);
            }
            assert_eq!(now, until, "the backoff is slept in full");
            // The first round is at once, and no gap exceeds ack_wait / 3.
            assert_eq!(rounds[0], start);
            assert!(rounds.windows(2).all(|w| w[1] - w[0] <= ack_wait / 3));
            let expected = backoff.as_nanos().div_ceil((ack_wait / 3).as_nanos()) + 1;
            assert_eq!(rounds.len() as u128, expected, "{backoff:?}");
        }
    }
}
