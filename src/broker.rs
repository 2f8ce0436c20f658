//! NATS JetStream: the connection, the stream and the durable pull
//! consumer (created when missing), and fetching batches. Used at start by
//! `main` and then by the ingest thread alone.
//!
//! Traps handled here (see CRATES.md): `fetch` can hang across a reconnect, so
//! every wait has a client-side timeout; the connection reconnects forever;
//! the durable consumer is created explicitly and bound to, never implied.

// nats 0.26 marks its whole sync API deprecated in favour of async-nats.
#![allow(deprecated)]

use crate::nats_auth::{ConnectError, NatsTarget};
use nats::jetstream::{
    AckPolicy, BatchOptions, ConsumerConfig, DeliverPolicy, JetStream, PullSubscribeOptions,
    PullSubscription, StorageType, StreamConfig,
};
use nats::Message;
use std::io;
use std::time::{Duration, Instant};

/// Deliveries before JetStream gives up on a message. The ingest thread
/// dead-letters a message on its last delivery, so none vanishes.
pub const MAX_DELIVER: i64 = 100;

/// Messages delivered and not yet acked, over all replicas.
pub const MAX_ACK_PENDING: i64 = 8192;

/// The stream's duplicate window for `Nats-Msg-Id`.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How long a pull request waits on the server for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// Extra wait for the server's answer before a pull request counts as lost.
const PULL_GRACE: Duration = Duration::from_secs(1);

/// Once a batch has started, how long to wait for more before handing it on.
const LINGER: Duration = Duration::from_millis(2);

/// The names the service uses on the server.
#[derive(Debug, Clone)]
pub struct Names {
    pub stream: String,
    pub subject: String,
    pub consumer: String,
    pub replicas: usize,
    /// How long a message may stay unacked before JetStream redelivers it.
    /// The writer sends progress acks for a batch it holds through an outage.
    pub ack_wait: Duration,
}

/// Connects once; `ConnectError` says whether waiting can help.
pub fn connect(target: &NatsTarget) -> Result<nats::Connection, ConnectError> {
    let options = target
        .options()
        .map_err(|e| ConnectError::Permanent(format!("NATS credentials: {e}")))?
        .with_name("order-service")
        .max_reconnects(None)
        .disconnect_callback(|| log::warn!("NATS connection lost; reconnecting"))
        .reconnect_callback(|| log::info!("NATS connection re-established"));
    target.connect(options)
}

/// Creates the stream and the durable consumer if they are missing.
/// Existing ones with a different configuration are used as they are.
pub fn ensure_stream_and_consumer(js: &JetStream, names: &Names) -> io::Result<()> {
    let stream = StreamConfig {
        name: names.stream.clone(),
        subjects: vec![names.subject.clone()],
        storage: StorageType::File,
        duplicate_window: DUPLICATE_WINDOW.as_nanos() as i64,
        num_replicas: names.replicas,
        ..Default::default()
    };
    if let Err(err) = js.add_stream(stream) {
        // 10058: the stream exists with another configuration. Use it, as long
        // as it carries our subject.
        let info = js.stream_info(&names.stream).map_err(|_| err)?;
        if !info.config.subjects.iter().any(|s| s == &names.subject) {
            return Err(io::Error::other(format!(
                "stream {} exists but does not carry subject {} (it has {:?})",
                names.stream, names.subject, info.config.subjects
            )));
        }
    }
    let consumer = ConsumerConfig {
        durable_name: Some(names.consumer.clone()),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: names.ack_wait,
        max_deliver: MAX_DELIVER,
        max_ack_pending: MAX_ACK_PENDING,
        filter_subject: names.subject.clone(),
        ..Default::default()
    };
    if let Err(err) = js.add_consumer(&names.stream, consumer) {
        js.consumer_info(&names.stream, &names.consumer)
            .map_err(|_| err)?;
    }
    Ok(())
}

/// Pulls batches from the durable consumer, one pull request at a time.
pub struct Fetcher {
    subscription: PullSubscription,
    batch: usize,
    /// Messages the pull request in flight may still deliver (0: none in flight).
    owed: usize,
    deadline: Instant,
}

impl Fetcher {
    pub fn bind(js: &JetStream, names: &Names, batch: usize) -> io::Result<Fetcher> {
        let options = PullSubscribeOptions::new()
            .bind_stream(names.stream.clone())
            .durable_name(names.consumer.clone());
        let subscription = js.pull_subscribe_with_options(&names.subject, &options)?;
        Ok(Fetcher {
            subscription,
            batch,
            owed: 0,
            deadline: Instant::now(),
        })
    }

    /// The next messages: waits up to about a second for the first, then
    /// takes what follows without pausing. `Ok(empty)` means the server
    /// answered that there was nothing; `Err` that it did not answer, or
    /// answered with an error status.
    pub fn next_batch(&mut self) -> io::Result<Vec<Message>> {
        if self.owed == 0 {
            self.request()?;
        }
        self.read_open_request()
    }

    /// What the pull request in flight still delivers (the server ends it
    /// within about a second), at shutdown and before pausing for the
    /// writer: no message is left delivered but unseen until `ack_wait` runs
    /// out.
    pub fn finish(&mut self) -> Vec<Message> {
        let mut messages = Vec::new();
        while self.owed > 0 {
            match self.read_open_request() {
                Ok(more) => messages.extend(more),
                Err(_) => break,
            }
        }
        messages
    }

    fn request(&mut self) -> io::Result<()> {
        self.subscription.request_batch(BatchOptions {
            batch: self.batch,
            expires: Some(PULL_EXPIRES.as_nanos() as usize),
            no_wait: false,
        })?;
        self.owed = self.batch;
        self.deadline = Instant::now() + PULL_EXPIRES + PULL_GRACE;
        Ok(())
    }

    fn read_open_request(&mut self) -> io::Result<Vec<Message>> {
        let mut messages = Vec::new();
        while self.owed > 0 {
            let timeout = if messages.is_empty() {
                self.deadline.saturating_duration_since(Instant::now())
            } else {
                LINGER
            };
            match self.subscription.next_timeout(timeout) {
                Ok(message) if message.reply.is_none() => {
                    // A status (409 and the like) ends the pull request.
                    self.owed = 0;
                    if messages.is_empty() {
                        return Err(io::Error::other(format!(
                            "JetStream answered the pull request with {:?}",
                            message.headers
                        )));
                    }
                }
                Ok(message) => {
                    messages.push(message);
                    self.owed -= 1;
                }
                Err(err) if err.kind() == io::ErrorKind::TimedOut => {
                    if !messages.is_empty() {
                        break; // The request stays open; the next call reads on.
                    }
                    self.owed = 0;
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no answer from JetStream to a pull request",
                    ));
                }
                Err(_request_expired) => self.owed = 0,
            }
        }
        Ok(messages)
    }
}

/// Flushes the connection's buffered acks (an ack is a fire-and-forget
/// publish), so a clean exit leaves nothing unacked that was stored.
#[derive(Clone)]
pub struct AckFlusher(nats::Connection);

impl AckFlusher {
    pub fn new(connection: &nats::Connection) -> AckFlusher {
        AckFlusher(connection.clone())
    }

    pub fn flush(&self) {
        if let Err(err) = self.0.flush_timeout(Duration::from_secs(5)) {
            log::warn!("could not flush acks to NATS: {err}");
        }
    }
}

/// Stream sequence and delivery count of a JetStream message.
pub fn delivery_info(message: &Message) -> (Option<u64>, i64) {
    message
        .jetstream_message_info()
        .map_or((None, 1), |info| (Some(info.stream_seq), info.delivered))
}
