//! Pipelined, confirmed JetStream publishing on the main thread: each message
//! is a core publish with `Nats-Msg-Id` and its own reply subject under one
//! inbox; the PubAcks come back on a single subscription. At most `window`
//! messages are in flight. One that is not confirmed within `ack_timeout` (or
//! is answered with an error or "no responders") is sent again with the same
//! Nats-Msg-Id, so the stream stores it once whichever attempt lands.

// nats 0.26 marks its whole sync API deprecated in favour of async-nats.
#![allow(deprecated)]

use nats::header::HeaderMap;
use nats::{Connection, Message, Subscription};
use order_service::stream;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::time::{Duration, Instant};

/// Wait before resending a message the server answered with an error.
const ERROR_BACKOFF: Duration = Duration::from_millis(500);

/// What happened to the messages so far.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Counts {
    /// Messages handed to the publisher (each counted once, however often resent).
    pub sent: u64,
    /// Messages with a PubAck.
    pub confirmed: u64,
    /// PubAcks that said `duplicate: true` (the stream already had that Nats-Msg-Id).
    pub duplicates: u64,
    /// Resends after a timeout or an error answer.
    pub retries: u64,
    /// Messages given up on after `max_attempts`, or unconfirmed at the end.
    pub failed: u64,
}

pub struct Settings {
    pub window: usize,
    pub ack_timeout: Duration,
    pub max_attempts: u32,
}

pub struct Publisher {
    nc: Connection,
    subject: String,
    inbox: String,
    acks: Subscription,
    settings: Settings,
    max_payload: usize,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    /// (when, id): resend `id` at `when` unless it was confirmed or rescheduled.
    resend_at: BinaryHeap<Reverse<(Instant, u64)>>,
    pub counts: Counts,
    /// The last error the server answered with, for the summary.
    pub last_error: Option<String>,
}

struct Pending {
    msg_id: String,
    body: Vec<u8>,
    attempts: u32,
    resend_at: Instant,
}

/// A PubAck, or the error JetStream answers instead.
#[derive(Deserialize)]
struct PubAckReply {
    #[serde(default)]
    duplicate: bool,
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u64,
    #[serde(default)]
    description: String,
}

/// Why a message was not even sent.
#[derive(Debug)]
pub enum PublishError {
    /// Headers and body together exceed the server's `max_payload`, which
    /// would make the server close the connection.
    OverMaxPayload {
        size: usize,
        max_payload: usize,
    },
    Io(io::Error),
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::OverMaxPayload { size, max_payload } => write!(
                f,
                "a message of {size} bytes (with headers) is over the server's max_payload of {max_payload}"
            ),
            PublishError::Io(err) => write!(f, "cannot publish: {err}"),
        }
    }
}

impl Publisher {
    pub fn new(nc: Connection, subject: &str, settings: Settings) -> io::Result<Publisher> {
        let inbox = format!("{}.", nc.new_inbox());
        let acks = nc.subscribe(&format!("{inbox}*"))?;
        let max_payload = nc.max_payload();
        Ok(Publisher {
            nc,
            subject: subject.to_owned(),
            inbox,
            acks,
            settings,
            max_payload,
            next_id: 0,
            pending: HashMap::new(),
            resend_at: BinaryHeap::new(),
            counts: Counts::default(),
            last_error: None,
        })
    }

    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Bytes a message takes against `max_payload`: its body and its headers
    /// (`NATS/1.0\r\nNats-Msg-Id: <id>\r\n\r\n`).
    pub fn wire_size(msg_id: &str, body_len: usize) -> usize {
        "NATS/1.0\r\nNats-Msg-Id: \r\n\r\n".len() + msg_id.len() + body_len
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Sends one message once the window has room. Returns when it is on the
    /// wire, not when it is confirmed.
    pub fn publish(&mut self, msg_id: String, body: Vec<u8>) -> Result<(), PublishError> {
        let size = Publisher::wire_size(&msg_id, body.len());
        if size > self.max_payload {
            return Err(PublishError::OverMaxPayload {
                size,
                max_payload: self.max_payload,
            });
        }
        while self.pending.len() >= self.settings.window {
            self.poll(Duration::from_millis(100))
                .map_err(PublishError::Io)?;
        }
        let id = self.next_id;
        self.next_id += 1;
        let now = Instant::now();
        let pending = Pending {
            msg_id,
            body,
            attempts: 1,
            resend_at: now + self.settings.ack_timeout,
        };
        self.send(id, &pending).map_err(PublishError::Io)?;
        self.resend_at.push(Reverse((pending.resend_at, id)));
        self.pending.insert(id, pending);
        self.counts.sent += 1;
        Ok(())
    }

    /// Waits up to `max_wait` for PubAcks, takes every one that arrived, and
    /// resends what is due.
    pub fn poll(&mut self, max_wait: Duration) -> io::Result<()> {
        let mut wait = max_wait;
        if let Some(Reverse((due, _))) = self.resend_at.peek() {
            wait = wait.min(due.saturating_duration_since(Instant::now()));
        }
        match self.acks.next_timeout(wait) {
            Ok(message) => self.take_ack(message),
            Err(err) if err.kind() == io::ErrorKind::TimedOut => {}
            Err(err) => return Err(err),
        }
        while let Some(message) = self.acks.try_next() {
            self.take_ack(message);
        }
        self.resend_due()
    }

    /// Waits until every message is confirmed or `timeout` passes; what is
    /// still unconfirmed then counts as failed. Returns how many those were.
    pub fn finish(&mut self, timeout: Duration) -> io::Result<u64> {
        let deadline = Instant::now() + timeout;
        while !self.pending.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            self.poll((deadline - now).min(Duration::from_millis(100)))?;
        }
        let unconfirmed = self.pending.len() as u64;
        self.counts.failed += unconfirmed;
        self.pending.clear();
        self.resend_at.clear();
        Ok(unconfirmed)
    }

    fn send(&self, id: u64, pending: &Pending) -> io::Result<()> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", pending.msg_id.as_str());
        let reply = format!("{}{id}", self.inbox);
        self.nc.publish_with_reply_or_headers(
            &self.subject,
            Some(&reply),
            Some(&headers),
            &pending.body,
        )
    }

    fn take_ack(&mut self, message: Message) {
        let Some(id) = message
            .subject
            .strip_prefix(&self.inbox)
            .and_then(|suffix| suffix.parse::<u64>().ok())
        else {
            return;
        };
        // Already confirmed (an answer to an earlier attempt came late).
        if !self.pending.contains_key(&id) {
            return;
        }
        let error = if message.is_no_responders() {
            Some(format!(
                "no responders: no JetStream stream takes subject {}",
                self.subject
            ))
        } else {
            match serde_json::from_slice::<PubAckReply>(&message.data) {
                Ok(PubAckReply {
                    error: None,
                    duplicate,
                }) => {
                    self.pending.remove(&id);
                    self.counts.confirmed += 1;
                    self.counts.duplicates += u64::from(duplicate);
                    return;
                }
                Ok(PubAckReply {
                    error: Some(error), ..
                }) => Some(format!(
                    "JetStream error {}: {}",
                    error.code, error.description
                )),
                Err(_) => Some(format!(
                    "unreadable PubAck: {}",
                    String::from_utf8_lossy(&message.data)
                )),
            }
        };
        self.last_error = error;
        let pending = self.pending.get_mut(&id).expect("checked above");
        pending.resend_at = Instant::now() + ERROR_BACKOFF;
        self.resend_at.push(Reverse((pending.resend_at, id)));
    }

    fn resend_due(&mut self) -> io::Result<()> {
        let now = Instant::now();
        while let Some(&Reverse((due, id))) = self.resend_at.peek() {
            if due > now {
                break;
            }
            self.resend_at.pop();
            let Some(pending) = self.pending.get(&id) else {
                continue;
            };
            if pending.resend_at != due {
                continue;
            }
            if pending.attempts >= self.settings.max_attempts {
                self.pending.remove(&id);
                self.counts.failed += 1;
                continue;
            }
            self.send(id, pending)?;
            let pending = self.pending.get_mut(&id).expect("present");
            pending.attempts += 1;
            pending.resend_at = now + self.settings.ack_timeout;
            self.resend_at.push(Reverse((pending.resend_at, id)));
            self.counts.retries += 1;
        }
        Ok(())
    }
}

/// Makes sure a stream takes `subject`: uses an existing `stream` if it
/// takes the subject (by the service's rule, `stream::takes_subject`), and
/// creates it exactly as the service would if it is missing.
pub fn ensure_stream(nc: &Connection, name: &str, subject: &str) -> Result<String, String> {
    let js = nats::jetstream::new(nc.clone());
    match js.stream_info(name) {
        Ok(info) => {
            if stream::takes_subject(&info.config.subjects, subject) {
                Ok(format!("stream {name} exists"))
            } else {
                Err(format!(
                    "stream {name} exists but does not take subject {subject} (its subjects: {})",
                    info.config.subjects.join(", ")
                ))
            }
        }
        Err(err) if is_stream_not_found(&err) => js
            .add_stream(stream::stream_config(name, subject, 1))
            .map(|_| format!("created stream {name} for subject {subject}"))
            .map_err(|err| format!("cannot create stream {name}: {err}")),
        Err(err) => Err(format!(
            "cannot look up stream {name}: {err} (is JetStream enabled? nats-server -js)"
        )),
    }
}

fn is_stream_not_found(err: &io::Error) -> bool {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<nats::jetstream::Error>())
        .is_some_and(|js_err| js_err.error_code() == nats::jetstream::ErrorCode::StreamNotFound)
}
