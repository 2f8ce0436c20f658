//! NATS for tests: unique stream, subject and consumer names, the stream as
//! the service declares it, consumer state to assert on, and a publisher
//! that waits for every PubAck.

// nats 0.26 marks its whole sync API deprecated in favour of async-nats.
#![allow(deprecated)]

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use nats::jetstream::{
    ConsumerConfig, ConsumerInfo, JetStream, PublishAck, PublishOptions, StreamConfig,
};
use serde_json::Value;

use super::unique;

/// A stream, subject and durable consumer nobody else uses.
#[derive(Debug, Clone)]
pub struct NatsNames {
    pub stream: String,
    pub subject: String,
    pub consumer: String,
}

impl NatsNames {
    pub fn unique() -> NatsNames {
        let tag = unique("t");
        NatsNames {
            stream: format!("S{tag}"),
            subject: format!("orders_{tag}"),
            consumer: format!("c{tag}"),
        }
    }

    /// Deletes the stream (and its consumers) when dropped, panic or not.
    pub fn guard(&self, nats_url: &str) -> StreamGuard {
        StreamGuard {
            nats_url: nats_url.to_owned(),
            stream: self.stream.clone(),
        }
    }
}

/// Deletes a stream on `Drop`.
pub struct StreamGuard {
    pub nats_url: String,
    pub stream: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        delete_stream(&self.nats_url, &self.stream);
    }
}

// ---------------------------------------------------------------------------
// The stream and consumer as the service declares them
// ---------------------------------------------------------------------------
//
// The definition is the service's own (`order_service::stream`), so a test
// that creates the stream first creates exactly what the service would.

fn service_names(names: &NatsNames, ack_wait: Duration) -> order_service::stream::Names {
    order_service::stream::Names {
        stream: names.stream.clone(),
        subject: names.subject.clone(),
        consumer: names.consumer.clone(),
        replicas: 1,
        ack_wait,
    }
}

/// The stream the service creates.
fn service_stream(names: &NatsNames) -> StreamConfig {
    service_names(names, Duration::ZERO).stream_config()
}

/// The durable pull consumer the service creates, with `ack_wait` chosen by
/// the test.
fn service_consumer(names: &NatsNames, ack_wait: Duration) -> ConsumerConfig {
    service_names(names, ack_wait).consumer_config()
}

pub(super) fn nats_connect_once(nats_url: &str) -> std::io::Result<nats::Connection> {
    nats::Options::new()
        .with_name("order-service-tests")
        .max_reconnects(None)
        .connect(nats_url)
}

/// A JetStream context on a fresh connection, retried for up to 10 s.
pub fn jetstream(nats_url: &str) -> JetStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match nats_connect_once(nats_url) {
            Ok(nc) => return nats::jetstream::new(nc),
            Err(err) if Instant::now() < deadline => {
                let _ = err;
                thread::sleep(Duration::from_millis(100));
            }
            Err(err) => panic!("connect to NATS at {nats_url}: {err}"),
        }
    }
}

/// Deletes a stream; a stream that is missing or a server that is gone is
/// not an error.
pub fn delete_stream(nats_url: &str, stream: &str) {
    if let Ok(nc) = nats_connect_once(nats_url) {
        let js = nats::jetstream::new(nc.clone());
        let _ = js.delete_stream(stream);
        nc.close();
    }
}

/// The numbers of a durable consumer a test asserts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerState {
    /// Messages in the stream not yet delivered.
    pub num_pending: u64,
    /// Messages delivered and not yet acked.
    pub num_ack_pending: usize,
    pub num_redelivered: usize,
    /// Highest stream sequence delivered.
    pub delivered_stream_seq: u64,
    /// Deliveries made, redeliveries included: equal to
    /// `delivered_stream_seq` when no message was ever delivered twice.
    pub delivered_consumer_seq: u64,
    /// Stream sequence below which everything is acked.
    pub ack_floor_stream_seq: u64,
}

impl From<&ConsumerInfo> for ConsumerState {
    fn from(info: &ConsumerInfo) -> ConsumerState {
        ConsumerState {
            num_pending: info.num_pending,
            num_ack_pending: info.num_ack_pending,
            num_redelivered: info.num_redelivered,
            delivered_stream_seq: info.delivered.stream_seq,
            delivered_consumer_seq: info.delivered.consumer_seq,
            ack_floor_stream_seq: info.ack_floor.stream_seq,
        }
    }
}

/// The durable consumer's state, or `None` when it does not exist (yet).
pub fn consumer_info(nats_url: &str, names: &NatsNames) -> Option<ConsumerState> {
    let js = jetstream(nats_url);
    js.consumer_info(&names.stream, &names.consumer)
        .ok()
        .map(|info| ConsumerState::from(&info))
}

/// The number of messages in a stream (`None` if it does not exist).
pub fn stream_messages(nats_url: &str, stream: &str) -> Option<u64> {
    let js = jetstream(nats_url);
    js.stream_info(stream).ok().map(|info| info.state.messages)
}

/// Creates the stream and the durable consumer the way the service would,
/// so that a test can publish before any service ran. Note: when the service
/// then adds its consumer, nats-server 2.9 updates the editable fields
/// (`ack_wait` among them) to the service's values.
pub fn precreate_stream_and_consumer(nats_url: &str, names: &NatsNames, ack_wait: Duration) {
    let js = jetstream(nats_url);
    js.add_stream(service_stream(names))
        .unwrap_or_else(|e| panic!("add_stream {}: {e}", names.stream));
    js.add_consumer(&names.stream, service_consumer(names, ack_wait))
        .unwrap_or_else(|e| panic!("add_consumer {}: {e}", names.consumer));
}

/// Waits until the consumer has nothing pending and nothing unacked: every
/// published message was handled (stored, or dead-lettered and terminated).
pub fn wait_consumer_drained(nats_url: &str, names: &NatsNames, timeout: Duration) {
    let js = jetstream(nats_url);
    let mut last = String::from("(no consumer yet)");
    let start = Instant::now();
    loop {
        if let Ok(info) = js.consumer_info(&names.stream, &names.consumer) {
            let state = ConsumerState::from(&info);
            if state.num_pending == 0 && state.num_ack_pending == 0 {
                return;
            }
            last = format!("{state:?}");
        }
        if start.elapsed() > timeout {
            panic!(
                "consumer {} not drained within {timeout:?}: {last}",
                names.consumer
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A confirmed publish: where it landed, and whether the stream dropped it
/// as a duplicate of an earlier `Nats-Msg-Id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub sequence: u64,
    pub duplicate: bool,
}

/// Publishes to JetStream and waits for each PubAck.
pub struct Publisher {
    pub nc: nats::Connection,
    pub js: JetStream,
}

impl Publisher {
    pub fn connect(nats_url: &str) -> Publisher {
        let deadline = Instant::now() + Duration::from_secs(10);
        let nc = loop {
            match nats_connect_once(nats_url) {
                Ok(nc) => break nc,
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(100)),
                Err(err) => panic!("connect to NATS at {nats_url}: {err}"),
            }
        };
        let js = nats::jetstream::new(nc.clone());
        Publisher { nc, js }
    }

    /// One confirmed publish. Retried with the same `Nats-Msg-Id` (2 s per
    /// attempt, 30 s in all): a publish that timed out may still be stored.
    pub fn publish(&self, subject: &str, msg_id: Option<&str>, payload: &[u8]) -> Published {
        assert!(
            payload.len() <= self.nc.max_payload(),
            "payload of {} bytes is over the server's max_payload {}",
            payload.len(),
            self.nc.max_payload()
        );
        let options = PublishOptions {
            timeout: Some(Duration::from_secs(2)),
            id: msg_id.map(str::to_owned),
            ..Default::default()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.js.publish_with_options(subject, payload, &options) {
                Ok(ack) => return published(&ack),
                Err(err) if Instant::now() < deadline => {
                    let _ = err;
                    thread::sleep(Duration::from_millis(100));
                }
                Err(err) => {
                    panic!("publish to {subject} ({msg_id:?}) not confirmed in 30 s: {err}")
                }
            }
        }
    }

    /// Publishes `(msg_id, payload)` pairs pipelined (a window of 256 in
    /// flight) and returns once every one is confirmed; unconfirmed ones are
    /// resent with the same id after 2 s; 60 s in all.
    pub fn publish_many(&self, subject: &str, msgs: &[(String, Vec<u8>)]) {
        const WINDOW: usize = 256;
        const RESEND_AFTER: Duration = Duration::from_secs(2);
        if msgs.is_empty() {
            return;
        }
        let inbox = self.nc.new_inbox();
        let sub = self
            .nc
            .subscribe(&format!("{inbox}.*"))
            .expect("subscribe to the ack inbox");
        let send = |i: usize| {
            let (id, payload) = &msgs[i];
            let mut headers = nats::header::HeaderMap::new();
            headers.insert(nats::header::NATS_MSG_ID, id.clone());
            let _ = self.nc.publish_with_reply_or_headers(
                subject,
                Some(&format!("{inbox}.{i}")),
                Some(&headers),
                payload,
            );
        };
        let mut in_flight: BTreeMap<usize, Instant> = BTreeMap::new();
        let mut confirmed = vec![false; msgs.len()];
        let mut remaining = msgs.len();
        let mut next = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while remaining > 0 {
            while in_flight.len() < WINDOW && next < msgs.len() {
                send(next);
                in_flight.insert(next, Instant::now());
                next += 1;
            }
            if let Ok(reply) = sub.next_timeout(Duration::from_millis(100)) {
                let index = reply
                    .subject
                    .rsplit('.')
                    .next()
                    .and_then(|s| s.parse::<usize>().ok());
                if let Some(i) = index.filter(|i| *i < msgs.len()) {
                    let ok = serde_json::from_slice::<Value>(&reply.data)
                        .map(|v| v.get("seq").is_some() && v.get("error").is_none())
                        .unwrap_or(false);
                    if ok {
                        if !confirmed[i] {
                            confirmed[i] = true;
                            remaining -= 1;
                        }
                        in_flight.remove(&i);
                    } else if let Some(sent) = in_flight.get_mut(&i) {
                        // No responders or an error: resend soon.
                        *sent = Instant::now() - RESEND_AFTER + Duration::from_millis(100);
                    }
                }
            }
            let now = Instant::now();
            let stale: Vec<usize> = in_flight
                .iter()
                .filter(|(_, sent)| now.duration_since(**sent) >= RESEND_AFTER)
                .map(|(i, _)| *i)
                .collect();
            for i in stale {
                send(i);
                in_flight.insert(i, Instant::now());
            }
            if now > deadline {
                panic!(
                    "publish_many: {remaining} of {} messages not confirmed in 60 s",
                    msgs.len()
                );
            }
        }
        let _ = sub.unsubscribe();
    }

    /// Publishes orders as `(uid, body)` with `Nats-Msg-Id` = uid.
    pub fn publish_orders(&self, subject: &str, orders: &[(String, Vec<u8>)]) {
        self.publish_many(subject, orders);
    }
}

fn published(ack: &PublishAck) -> Published {
    Published {
        sequence: ack.sequence,
        duplicate: ack.duplicate,
    }
}

/// Publishes `orders` from another thread in chunks of `chunk` with `pause`
/// between them, so that ingest is still going on when a test breaks
/// something. Every message is confirmed (resent with its id until it is).
pub fn publish_in_background(
    nats_url: &str,
    subject: &str,
    orders: &[(String, Vec<u8>)],
    chunk: usize,
    pause: Duration,
) -> thread::JoinHandle<()> {
    let (nats_url, subject, orders) = (nats_url.to_owned(), subject.to_owned(), orders.to_vec());
    thread::Builder::new()
        .name("background-publisher".into())
        .spawn(move || {
            let publisher = Publisher::connect(&nats_url);
            for part in orders.chunks(chunk) {
                publisher.publish_many(&subject, part);
                thread::sleep(pause);
            }
        })
        .expect("spawn publisher thread")
}
