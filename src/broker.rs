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
use crate::stream::{self, Names};
use nats::jetstream::{BatchOptions, JetStream, PullSubscribeOptions, PullSubscription};
use nats::Message;
use std::io;
use std::time::{Duration, Instant};

/// How long a pull request waits on the server for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// Extra wait for the server's answer before a pull request counts as lost.
const PULL_GRACE: Duration = Duration::from_secs(1);

/// Once a batch has started, how long to wait for more before handing it on.
const LINGER: Duration = Duration::from_millis(2);

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
    if let Err(err) = js.add_stream(names.stream_config()) {
        // 10058: the stream exists with another configuration. Use it, as long
        // as it takes our subject.
        let info = js.stream_info(&names.stream).map_err(|_| err)?;
        if !stream::takes_subject(&info.config.subjects, &names.subject) {
            return Err(io::Error::other(format!(
                "stream {} exists but does not take subject {} (its subjects: {})",
                names.stream,
                names.subject,
                info.config.subjects.join(", ")
            )));
        }
    }
    if let Err(err) = js.add_consumer(&names.stream, names.consumer_config()) {
        js.consumer_info(&names.stream, &names.consumer)
            .map_err(|_| err)?;
    }
    Ok(())
}

/// Pulls batches from the durable consumer, one pull request at a time.
/// `Pull` decides; this only talks to the server.
pub struct Fetcher {
    subscription: PullSubscription,
    pull: Pull,
}

impl Fetcher {
    pub fn bind(js: &JetStream, names: &Names, batch: usize) -> io::Result<Fetcher> {
        let options = PullSubscribeOptions::new()
            .bind_stream(names.stream.clone())
            .durable_name(names.consumer.clone());
        let subscription = js.pull_subscribe_with_options(&names.subject, &options)?;
        Ok(Fetcher {
            subscription,
            pull: Pull::new(batch, Instant::now()),
        })
    }

    /// The next messages: waits up to about a second for the first, then
    /// takes what follows without pausing. `Ok(empty)` means the server
    /// answered that there was nothing; `Err` that it did not answer, or
    /// answered with an error status, or the subscription is gone.
    pub fn next_batch(&mut self) -> io::Result<Vec<Message>> {
        if !self.pull.in_flight() {
            self.subscription.request_batch(BatchOptions {
                batch: self.pull.batch,
                expires: Some(PULL_EXPIRES.as_nanos() as usize),
                no_wait: false,
            })?;
            self.pull.requested(Instant::now());
        }
        self.read_open_request()
    }

    /// What the pull request in flight still delivers (the server ends it
    /// within about a second), at shutdown and before pausing for the
    /// writer: no message is left delivered but unseen until `ack_wait` runs
    /// out.
    pub fn finish(&mut self) -> Vec<Message> {
        let mut messages = Vec::new();
        while self.pull.in_flight() {
            match self.read_open_request() {
                Ok(more) => messages.extend(more),
                Err(_) => break,
            }
        }
        messages
    }

    fn read_open_request(&mut self) -> io::Result<Vec<Message>> {
        let mut messages = Vec::new();
        while let Some(timeout) = self.pull.wait(Instant::now(), messages.len()) {
            let event = match self.subscription.next_timeout(timeout) {
                // A status (409 and the like) ends the pull request.
                Ok(message) if message.reply.is_none() => {
                    Event::Status(format!("{:?}", message.headers))
                }
                Ok(message) => {
                    messages.push(message);
                    Event::Message
                }
                Err(err) if err.kind() == io::ErrorKind::TimedOut => Event::Silence,
                // nats 0.26 tells these two apart by their text alone.
                Err(err) if err.to_string().contains("Pull Request timed out") => Event::Expired,
                Err(err) => Event::Broken(err.to_string()),
            };
            match self.pull.on(event, messages.len()) {
                Step::Continue => {}
                Step::Deliver => break,
                Step::Fail(err) => return Err(err),
            }
        }
        Ok(messages)
    }
}

/// The pull request in flight, without I/O: how many messages it may still
/// deliver and until when its answer is awaited.
#[derive(Debug)]
pub struct Pull {
    batch: usize,
    /// Messages the request in flight may still deliver (0: none in flight).
    owed: usize,
    deadline: Instant,
}

/// What the subscription gave while a request was in flight.
#[derive(Debug)]
pub enum Event {
    Message,
    /// A status message instead of a message: the request is over.
    Status(String),
    /// Nothing within the wait `Pull::wait` gave.
    Silence,
    /// The server's "request expired": it ended the request, nothing more comes.
    Expired,
    /// The subscription itself failed (unsubscribed, connection closed).
    Broken(String),
}

#[derive(Debug)]
pub enum Step {
    /// Keep reading while `Pull::wait` says so.
    Continue,
    /// Hand on what was read; the request stays open for the next call.
    Deliver,
    Fail(io::Error),
}

impl Pull {
    pub fn new(batch: usize, now: Instant) -> Pull {
        Pull {
            batch,
            owed: 0,
            deadline: now,
        }
    }

    pub fn in_flight(&self) -> bool {
        self.owed > 0
    }

    /// A pull request for `batch` messages went out at `now`.
    pub fn requested(&mut self, now: Instant) {
        self.owed = self.batch;
        self.deadline = now + PULL_EXPIRES + PULL_GRACE;
    }

    /// How long to wait for the next message, holding `have` already:
    /// until the deadline for the first, `LINGER` for each one after;
    /// `None` once nothing more is owed.
    pub fn wait(&self, now: Instant, have: usize) -> Option<Duration> {
        if self.owed == 0 {
            None
        } else if have == 0 {
            Some(self.deadline.saturating_duration_since(now))
        } else {
            Some(LINGER)
        }
    }

    /// Takes what the subscription gave, holding `have` messages (counting
    /// this one if it was a message).
    pub fn on(&mut self, event: Event, have: usize) -> Step {
        match event {
            Event::Message => {
                self.owed = self.owed.saturating_sub(1);
                Step::Continue
            }
            Event::Status(status) => self.end_failed(
                have,
                format!("JetStream answered the pull request with {status}"),
            ),
            // The request stays open; the next call reads on.
            Event::Silence if have > 0 => Step::Deliver,
            Event::Silence => {
                self.owed = 0;
                Step::Fail(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no answer from JetStream to a pull request",
                ))
            }
            Event::Expired => {
                self.owed = 0;
                Step::Continue
            }
            // Not "no messages": the caller backs off and reports.
            Event::Broken(why) => {
                self.end_failed(have, format!("the pull subscription failed: {why}"))
            }
        }
    }

    /// The request is over, for a reason that is an error unless messages
    /// were read first (they are handed on; the next call meets the error).
    fn end_failed(&mut self, have: usize, why: String) -> Step {
        self.owed = 0;
        if have == 0 {
            Step::Fail(io::Error::other(why))
        } else {
            Step::Continue
        }
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

/// The stream sequence of a JetStream message, recorded with its order or
/// dead letter.
pub fn stream_sequence(message: &Message) -> Option<u64> {
    message.jetstream_message_info().map(|info| info.stream_seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requested(batch: usize) -> (Pull, Instant) {
        let now = Instant::now();
        let mut pull = Pull::new(batch, now);
        assert!(!pull.in_flight());
        assert_eq!(pull.wait(now, 0), None, "nothing owed before a request");
        pull.requested(now);
        (pull, now)
    }

    #[test]
    fn the_first_message_is_awaited_until_expiry_plus_grace_then_each_next_lingers() {
        let (mut pull, now) = requested(3);
        assert_eq!(pull.wait(now, 0), Some(PULL_EXPIRES + PULL_GRACE));
        let later = now + Duration::from_millis(1500);
        assert_eq!(pull.wait(later, 0), Some(PULL_GRACE / 2));
        assert!(matches!(pull.on(Event::Message, 1), Step::Continue));
        assert_eq!(pull.wait(later, 1), Some(LINGER));
        // Nothing more within the linger: deliver, the request stays open.
        assert!(matches!(pull.on(Event::Silence, 1), Step::Deliver));
        assert!(pull.in_flight());
        // The next call reads on until the batch is complete.
        pull.on(Event::Message, 1);
        pull.on(Event::Message, 2);
        assert!(!pull.in_flight());
        assert_eq!(pull.wait(later, 2), None);
    }

    #[test]
    fn silence_before_any_message_is_an_unanswered_request() {
        let (mut pull, _) = requested(2);
        match pull.on(Event::Silence, 0) {
            Step::Fail(err) => assert_eq!(err.kind(), io::ErrorKind::TimedOut),
            other => panic!("{other:?}"),
        }
        assert!(!pull.in_flight(), "the next call sends a new request");
    }

    #[test]
    fn an_expired_request_is_no_messages_and_a_new_one_follows() {
        let (mut pull, now) = requested(2);
        assert!(matches!(pull.on(Event::Expired, 0), Step::Continue));
        assert_eq!(pull.wait(now, 0), None);
    }

    #[test]
    fn a_status_ends_the_request_and_is_an_error_only_with_nothing_read() {
        let (mut pull, _) = requested(4);
        assert!(matches!(
            pull.on(Event::Status("409".into()), 0),
            Step::Fail(_)
        ));
        let (mut pull, _) = requested(4);
        pull.on(Event::Message, 1);
        assert!(matches!(
            pull.on(Event::Status("409".into()), 1),
            Step::Continue
        ));
        assert!(!pull.in_flight());
    }

    /// The subscription closing is not "no messages" (issue 14): treated as
    /// such, the consumer would spin with no pause and stay healthy.
    #[test]
    fn a_broken_subscription_is_an_error_not_an_empty_batch() {
        let (mut pull, _) = requested(4);
        match pull.on(Event::Broken("next_timeout: unsubscribed".into()), 0) {
            Step::Fail(err) => assert!(err.to_string().contains("unsubscribed"), "{err}"),
            other => panic!("{other:?}"),
        }
        assert!(!pull.in_flight());
        // Messages already read are still handed on.
        let (mut pull, _) = requested(4);
        pull.on(Event::Message, 1);
        assert!(matches!(
            pull.on(Event::Broken("unsubscribed".into()), 1),
            Step::Continue
        ));
    }
}
