//! The JetStream stream and durable consumer the service reads from, defined
//! once: names, limits, the duplicate window and how a stream that already
//! exists is judged. The service (`broker`), the pusher and the tests all
//! build their configurations here, so they cannot drift apart.
//!
//! No I/O here: creating them on a server is `broker`'s job (and pusher's).

// nats 0.26 marks its whole sync API deprecated in favour of async-nats.
#![allow(deprecated)]

use nats::jetstream::{AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig};
use std::time::Duration;

/// The stream's name when `NATS_STREAM` is not set.
pub const DEFAULT_STREAM: &str = "ORDERS";

/// The subject orders are published on when `NATS_SUBJECT` is not set.
pub const DEFAULT_SUBJECT: &str = "orders";

/// Deliveries before JetStream gives up on a message. The ingest thread
/// dead-letters a message on its last delivery, so none vanishes.
pub const MAX_DELIVER: i64 = 100;

/// Messages delivered and not yet acked, over all replicas.
pub const MAX_ACK_PENDING: i64 = 8192;

/// How long the stream remembers a `Nats-Msg-Id`: a publisher's resend
/// within it is stored once.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The names the service uses on the server, and its consumer's `ack_wait`.
#[derive(Debug, Clone)]
pub struct Names {
    pub stream: String,
    pub subject: String,
    pub consumer: String,
    /// Replicas of the stream when it is created here (3 on a cluster).
    pub replicas: usize,
    /// How long a message may stay unacked before JetStream redelivers it.
    /// The writer sends progress acks for a batch it holds through an outage.
    pub ack_wait: Duration,
}

impl Names {
    pub fn stream_config(&self) -> StreamConfig {
        stream_config(&self.stream, &self.subject, self.replicas)
    }

    /// The durable pull consumer: every message from the start, each acked
    /// on its own, filtered to our subject (the stream may carry others).
    pub fn consumer_config(&self) -> ConsumerConfig {
        ConsumerConfig {
            durable_name: Some(self.consumer.clone()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: MAX_DELIVER,
            max_ack_pending: MAX_ACK_PENDING,
            filter_subject: self.subject.clone(),
            ..Default::default()
        }
    }
}

/// The stream as created when missing: on disk, taking exactly `subject`,
/// with the duplicate window, and no limits on age or size (orders are
/// removed by nobody; PostgreSQL is the record).
pub fn stream_config(stream: &str, subject: &str, replicas: usize) -> StreamConfig {
    StreamConfig {
        name: stream.to_owned(),
        subjects: vec![subject.to_owned()],
        storage: StorageType::File,
        duplicate_window: DUPLICATE_WINDOW.as_nanos() as i64,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Whether an existing stream with these subject patterns stores what is
/// published on `subject`. Wildcards count: JetStream itself stores a
/// message when any pattern matches, and accepts a consumer filtered to a
/// subject its stream's patterns cover, so an operator's `orders.>` stream
/// serves `orders.eu` as well as one created for exactly that subject.
pub fn takes_subject(patterns: &[String], subject: &str) -> bool {
    patterns
        .iter()
        .any(|pattern| subject_matches(pattern, subject))
}

/// NATS subject matching: `*` is one token, `>` one or more to the end.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for token in pattern.split('.') {
        match (token, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (literal, Some(actual)) if literal == actual => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_as_nats_matches_them() {
        assert!(subject_matches("orders", "orders"));
        assert!(!subject_matches("orders", "orders.x"));
        assert!(!subject_matches("orders.x", "orders"));
        assert!(subject_matches("orders.*", "orders.x"));
        assert!(!subject_matches("orders.*", "orders"));
        assert!(!subject_matches("orders.*", "orders.x.y"));
        assert!(subject_matches("orders.>", "orders.a.b"));
        assert!(!subject_matches("orders.>", "orders"));
        assert!(subject_matches(">", "orders"));
        assert!(subject_matches("*.eu", "orders.eu"));
        assert!(!subject_matches("other", "orders"));
    }

    #[test]
    fn a_stream_takes_a_subject_when_any_pattern_matches() {
        let patterns = ["audit".to_owned(), "orders.>".to_owned()];
        assert!(takes_subject(&patterns, "orders.eu"));
        assert!(!takes_subject(&patterns, "orders"));
        assert!(!takes_subject(&[], "orders"));
    }

    #[test]
    fn the_consumer_reads_the_stream_created_for_the_same_names() {
        let names = Names {
            stream: "S".into(),
            subject: "orders.eu".into(),
            consumer: "c".into(),
            replicas: 3,
            ack_wait: Duration::from_secs(7),
        };
        let stream = names.stream_config();
        let consumer = names.consumer_config();
        assert!(takes_subject(&stream.subjects, &consumer.filter_subject));
        assert_eq!(stream.num_replicas, 3);
        assert_eq!(stream.duplicate_window, 120_000_000_000);
        assert_eq!(consumer.ack_wait, Duration::from_secs(7));
        assert_eq!(consumer.max_deliver, MAX_DELIVER);
        assert_eq!(consumer.durable_name.as_deref(), Some("c"));
    }
}
