//! The loaders: the only threads that read PostgreSQL for the HTTP side.
//! An HTTP worker never holds a connection: it hands a `Job` to a bounded
//! channel. `CACHE_LOADERS` named threads (`loader-N`), each with its own
//! connection, take jobs from it.
//!
//! Three kinds of reads:
//! - orders by uid (cache misses): the asker leaves a callback
//!   (`order_then`) and goes on; the loader calls it with the answer. Every
//!   request for a uid already in flight adds its callback to the same
//!   answer instead of queueing a second query, and a loader takes every
//!   queued uid at once into one `order_uid = ANY($1)` query. Each callback
//!   is called exactly once, within `DEADLINE`: by a loader with the answer,
//!   or by the `loader-deadlines` thread with `LoadError::Timeout` (a loader
//!   stuck in a query cannot time itself out). An HTTP worker parks the
//!   request in its callback, so a miss never holds a worker; `order` waits
//!   for the callback instead;
//! - pages of order ids, newest first, keyset by id;
//! - pages of dead letters, newest first, keyset by id, by kind or not.
//!
//! Whatever cannot be answered in time (queue full, deadline passed,
//! PostgreSQL unreachable) is a `LoadError`, which HTTP answers 503 with
//! `Retry-After`: never a 404 for something that may exist.

use crate::lifecycle::{Shutdown, ThreadResult};
use crate::metrics::Histogram;
use crate::order::RejectionKind;
use crate::store::{self, Database, StoredOrder};
use crossbeam_channel::{select, Receiver, RecvTimeoutError, Sender, TrySendError};
use postgres::{Client, Statement};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Jobs waiting for a loader, across all loaders. A miss is one job per
/// uid and each connection has at most one request in flight, so the queue
/// holds at most one job per connection waiting; the bound is what turns a
/// flood of misses on a stalled server into 503s (`LoadError::Busy`).
const QUEUE: usize = 256;
/// How long a read may take before its asker answers 503.
pub const DEADLINE: Duration = Duration::from_secs(2);
/// Most uids in one `ANY($1)` query.
const MAX_BATCH: usize = 512;
/// While PostgreSQL is unreachable, a loader tries to connect again at most
/// this often and answers every job in between at once: a fast 503 rather
/// than a connect attempt per request, and recovery within this interval.
const RECONNECT_EVERY: Duration = Duration::from_millis(250);
/// How long one loader query may run on the server.
const STATEMENT_TIMEOUT: &str = "5s";
/// Payload bytes shown per dead letter.
pub const PAYLOAD_SHOWN: usize = 4096;

/// Why a read was not answered. Each means "try again": the thing asked for
/// may well exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("too many reads are waiting for PostgreSQL")]
    Busy,
    #[error("PostgreSQL did not answer in time")]
    Timeout,
    #[error("PostgreSQL is unavailable: {0}")]
    Unavailable(String),
}

/// A page of order ids, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPage {
    pub uids: Vec<Arc<str>>,
    pub next_cursor: Option<i64>,
}

/// One dead letter as `/rejections` shows it (contract C3).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    pub id: i64,
    pub received_at: String,
    pub kind: String,
    pub reason: String,
    pub stream_sequence: Option<i64>,
    pub payload_length: i32,
    pub payload: String,
    pub payload_truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectionPage {
    pub rejections: Vec<Rejection>,
    pub next_cursor: Option<i64>,
}

pub type OrderAnswer = Result<Option<StoredOrder>, LoadError>;
/// What a loader calls with a uid's answer (on the loader's thread, on the
/// `loader-deadlines` thread at the deadline, or at once on the asker's
/// when the job is refused).
pub type Then = Box<dyn FnOnce(OrderAnswer) + Send>;

/// A callback that runs once, whoever comes first: the loader with the
/// answer or the deadline thread with a timeout.
struct Once(Mutex<Option<Then>>);

impl Once {
    fn call(&self, answer: OrderAnswer) {
        let then = lock(&self.0).take();
        if let Some(then) = then {
            then(answer);
        }
    }
}
type Reply<T> = Sender<Result<T, LoadError>>;

enum Job {
    /// A uid whose waiters are in `Shared::in_flight`.
    Order(Arc<str>),
    OrderPage {
        before: Option<i64>,
        limit: usize,
        reply: Reply<IdPage>,
    },
    Rejections {
        before: Option<i64>,
        limit: usize,
        kind: Option<RejectionKind>,
        reply: Reply<RejectionPage>,
    },
    Random {
        reply: Reply<Option<Arc<str>>>,
    },
}

/// The loaders' counters, rendered by `/metrics`.
#[derive(Default)]
pub struct LoaderStats {
    /// Uid lookups answered by PostgreSQL (found or not).
    pub queries: AtomicU64,
    /// Reads answered with a `LoadError` of any kind.
    pub errors: AtomicU64,
    /// Requests refused because the queue was full.
    pub busy: AtomicU64,
    /// Uid lookups by latency, from asking to the answer.
    pub miss_latency: Histogram,
}

/// What the HTTP workers and the loader threads share.
struct Shared {
    /// The callbacks of each uid queued or being read.
    in_flight: Mutex<HashMap<Arc<str>, Vec<Arc<Once>>>>,
    stats: LoaderStats,
}

/// The HTTP side's handle: cheap to clone, never touches PostgreSQL.
#[derive(Clone)]
pub struct Loader {
    jobs: Sender<Job>,
    /// Each parked callback with its deadline, in deadline order (one
    /// `deadline` for all, so arrival order is deadline order).
    deadlines: Sender<(Instant, Arc<Once>)>,
    shared: Arc<Shared>,
    deadline: Duration,
}

/// The loader threads' side of the channels; `run` takes one per thread,
/// `run_deadlines` one.
#[derive(Clone)]
pub struct LoaderJobs {
    jobs: Receiver<Job>,
    deadlines: Receiver<(Instant, Arc<Once>)>,
    shared: Arc<Shared>,
}

/// A loader handle and the receiving side for `loaders` threads.
pub fn channel() -> (Loader, LoaderJobs) {
    let (sender, receiver) = crossbeam_channel::bounded(QUEUE);
    // Unbounded, yet bounded in practice: one entry per uid lookup of the
    // last `DEADLINE`, each a pointer and an instant.
    let (deadlines, parked) = crossbeam_channel::unbounded();
    let shared = Arc::new(Shared {
        in_flight: Mutex::new(HashMap::new()),
        stats: LoaderStats::default(),
    });
    (
        Loader {
            jobs: sender,
            deadlines,
            shared: shared.clone(),
            deadline: DEADLINE,
        },
        LoaderJobs {
            jobs: receiver,
            deadlines: parked,
            shared,
        },
    )
}

impl Loader {
    /// The stored order `uid` (`None` if PostgreSQL has none), waiting for
    /// it until the deadline. Unit tests only: the service never waits for
    /// a miss (`order_then`).
    #[cfg(test)]
    pub fn order(&self, uid: &str) -> OrderAnswer {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.order_then(
            uid,
            Box::new(move |found| {
                let _ = reply.send(found);
            }),
        );
        // `loader-deadlines` answers in time; this wait is for when that
        // thread is not running (unit tests, the end of shutdown).
        answer.recv_timeout(self.deadline).unwrap_or_else(|err| {
            self.shared.stats.errors.fetch_add(1, Relaxed);
            Err(not_answered(err))
        })
    }

    /// Calls `then` once with the stored order `uid`, without waiting: when
    /// a loader has read it, with `LoadError::Timeout` at the deadline
    /// (when `loader-deadlines` runs), or at once with `LoadError::Busy`
    /// when the queue is full.
    pub fn order_then(&self, uid: &str, then: Then) {
        let started = Instant::now();
        let shared = self.shared.clone();
        let once = Arc::new(Once(Mutex::new(Some(Box::new(
            move |found: OrderAnswer| {
                let stats = &shared.stats;
                stats.miss_latency.observe(started.elapsed());
                if found.is_err() {
                    stats.errors.fetch_add(1, Relaxed);
                }
                then(found)
            },
        )))));
        let mut in_flight = lock(&self.shared.in_flight);
        match in_flight.get_mut(uid) {
            Some(waiting) => waiting.push(once.clone()),
            None => {
                let key: Arc<str> = uid.into();
                // Under the lock, so a loader cannot answer the uid before
                // its callback is recorded.
                if let Err(err) = self.jobs.try_send(Job::Order(key.clone())) {
                    drop(in_flight);
                    once.call(Err(self.refused(err)));
                    return;
                }
                in_flight.insert(key, vec![once.clone()]);
            }
        }
        drop(in_flight);
        let _ = self.deadlines.send((started + self.deadline, once));
    }

    /// Order ids older than `before`, newest first.
    pub fn order_page(&self, before: Option<i64>, limit: usize) -> Result<IdPage, LoadError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.submit(Job::OrderPage {
            before,
            limit,
            reply,
        })?;
        self.wait(&answer)
    }

    /// Dead letters older than `before`, newest first, of `kind` if given.
    pub fn rejections(
        &self,
        before: Option<i64>,
        limit: usize,
        kind: Option<RejectionKind>,
    ) -> Result<RejectionPage, LoadError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.submit(Job::Rejections {
            before,
            limit,
            kind,
            reply,
        })?;
        self.wait(&answer)
    }

    /// A random stored uid (`store::random_order`).
    pub fn random(&self) -> Result<Option<Arc<str>>, LoadError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.submit(Job::Random { reply })?;
        self.wait(&answer)
    }

    /// Jobs queued and not yet taken by a loader.
    pub fn queue_depth(&self) -> usize {
        self.jobs.len()
    }

    pub fn stats(&self) -> &LoaderStats {
        &self.shared.stats
    }

    fn submit(&self, job: Job) -> Result<(), LoadError> {
        self.jobs.try_send(job).map_err(|err| {
            self.shared.stats.errors.fetch_add(1, Relaxed);
            self.refused(err)
        })
    }

    /// Why `job` could not be queued (counted as busy when the queue is
    /// full; the caller counts the error).
    fn refused(&self, err: TrySendError<Job>) -> LoadError {
        match err {
            TrySendError::Full(_) => {
                self.shared.stats.busy.fetch_add(1, Relaxed);
                LoadError::Busy
            }
            TrySendError::Disconnected(_) => LoadError::Unavailable("the loaders stopped".into()),
        }
    }

    fn wait<T>(&self, answer: &Receiver<Result<T, LoadError>>) -> Result<T, LoadError> {
        let result = answer
            .recv_timeout(self.deadline)
            .unwrap_or_else(|err| Err(not_answered(err)));
        if result.is_err() {
            self.shared.stats.errors.fetch_add(1, Relaxed);
        }
        result
    }
}

fn not_answered(err: RecvTimeoutError) -> LoadError {
    if err.is_timeout() {
        LoadError::Timeout
    } else {
        LoadError::Unavailable("the loaders stopped".into())
    }
}

/// The `loader-deadlines` thread: calls each parked uid callback that no
/// loader answered by its deadline with `LoadError::Timeout`, so a request
/// parked on a stuck read is answered 503 in time. At shutdown it answers
/// every callback still parked, at once.
pub fn run_deadlines(jobs: LoaderJobs, shutdown: Shutdown) -> ThreadResult {
    let stopping = |parked: &Receiver<(Instant, Arc<Once>)>| {
        for (_, once) in parked.try_iter() {
            once.call(Err(LoadError::Unavailable("shutting down".into())));
        }
        Ok(())
    };
    loop {
        let (at, once) = select! {
            recv(shutdown.receiver()) -> _ => return stopping(&jobs.deadlines),
            recv(jobs.deadlines) -> next => match next {
                Ok(next) => next,
                Err(_) => return Ok(()),
            },
        };
        let wait = at.saturating_duration_since(Instant::now());
        if !wait.is_zero() && shutdown.sleep(wait) {
            once.call(Err(LoadError::Unavailable("shutting down".into())));
            return stopping(&jobs.deadlines);
        }
        once.call(Err(LoadError::Timeout));
    }
}

/// One loader thread: takes jobs until shutdown. Its connection is opened
/// on the first job and again after a failure, never retried in a loop:
/// while PostgreSQL is down, jobs are answered `Unavailable` at once.
pub fn run(database: Database, name: String, jobs: LoaderJobs, shutdown: Shutdown) -> ThreadResult {
    let mut connection = Connection {
        database,
        name,
        client: None,
        down: None,
    };
    let mut pending: VecDeque<Job> = VecDeque::new();
    loop {
        let job = match pending.pop_front() {
            Some(job) => job,
            None => select! {
                recv(shutdown.receiver()) -> _ => break,
                recv(jobs.jobs) -> job => match job {
                    Ok(job) => job,
                    Err(_) => break,
                },
            },
        };
        match job {
            Job::Order(uid) => {
                // Every uid queued behind this one joins its query; other
                // jobs wait their turn in `pending`.
                let mut uids = vec![uid];
                while uids.len() < MAX_BATCH {
                    match jobs.jobs.try_recv() {
                        Ok(Job::Order(uid)) => uids.push(uid),
                        Ok(other) => pending.push_back(other),
                        Err(_) => break,
                    }
                }
                let found = connection.with(|client, by_uids| {
                    let keys: Vec<&str> = uids.iter().map(|u| &**u).collect();
                    store::load_prepared_by_uids(client, by_uids, &keys)
                });
                jobs.shared
                    .stats
                    .queries
                    .fetch_add(uids.len() as u64, Relaxed);
                answer_orders(&jobs.shared, uids, found);
            }
            Job::OrderPage {
                before,
                limit,
                reply,
            } => {
                let page =
                    connection.with(|client, _| store::order_ids_before(client, before, limit));
                let _ = reply.send(page.map(|(rows, next_cursor)| IdPage {
                    uids: rows,
                    next_cursor,
                }));
            }
            Job::Random { reply } => {
                let _ = reply.send(connection.with(|client, _| store::random_order(client)));
            }
            Job::Rejections {
                before,
                limit,
                kind,
                reply,
            } => {
                let page = connection.with(|client, _| {
                    store::rejections_before(
                        client,
                        before,
                        limit,
                        kind.map(|k| k.label()),
                        PAYLOAD_SHOWN,
                    )
                });
                let _ = reply.send(page.map(|(rows, next_cursor)| RejectionPage {
                    rejections: rows.into_iter().map(rejection).collect(),
                    next_cursor,
                }));
            }
        }
    }
    log::info!("{} stopped", connection.name);
    Ok(())
}

/// Calls every callback of each uid with its answer, after taking them out
/// of `in_flight` (a callback writes to a socket: not under the lock).
fn answer_orders(shared: &Shared, uids: Vec<Arc<str>>, found: Result<Vec<StoredOrder>, LoadError>) {
    let mut by_uid: HashMap<Arc<str>, StoredOrder> = match &found {
        Ok(orders) => orders.iter().map(|o| (o.uid.clone(), o.clone())).collect(),
        Err(_) => HashMap::new(),
    };
    let waiting: Vec<(Arc<str>, Vec<Arc<Once>>)> = {
        let mut in_flight = lock(&shared.in_flight);
        uids.into_iter()
            .map(|uid| {
                let callbacks = in_flight.remove(&uid).unwrap_or_default();
                (uid, callbacks)
            })
            .collect()
    };
    for (uid, callbacks) in waiting {
        let answer = match &found {
            Ok(_) => Ok(by_uid.remove(&uid)),
            Err(err) => Err(err.clone()),
        };
        for once in callbacks {
            once.call(answer.clone());
        }
    }
}

/// A loader's connection, opened lazily.
struct Connection {
    database: Database,
    name: String,
    /// The connection, with its statement for misses
    /// (`store::prepare_load_by_uids`).
    client: Option<(Client, Statement)>,
    /// Since when, and when last tried, while PostgreSQL is unreachable.
    down: Option<Instant>,
}

impl Connection {
    /// Runs `read` on a live connection (with its prepared miss query),
    /// connecting first if need be. A failure drops the connection, so the
    /// next job reconnects.
    fn with<T>(
        &mut self,
        read: impl FnOnce(&mut Client, &Statement) -> Result<T, postgres::Error>,
    ) -> Result<T, LoadError> {
        if self
            .client
            .as_ref()
            .is_none_or(|(client, _)| client.is_closed())
        {
            self.client = None;
            if let Some(tried) = self.down {
                if tried.elapsed() < RECONNECT_EVERY {
                    return Err(LoadError::Unavailable("reconnecting".into()));
                }
            }
            match self.connect() {
                Ok(client) => {
                    if self.down.take().is_some() {
                        log::info!("{}: PostgreSQL is back", self.name);
                    }
                    self.client = Some(client);
                }
                Err(err) => {
                    let why = store::describe(&err);
                    if self.down.is_none() {
                        log::warn!("{}: PostgreSQL unavailable ({why})", self.name);
                    }
                    self.down = Some(Instant::now());
                    return Err(LoadError::Unavailable(why));
                }
            }
        }
        let (client, by_uids) = self.client.as_mut().expect("connected above");
        match read(client, by_uids) {
            Ok(answer) => Ok(answer),
            Err(err) => {
                let why = store::describe(&err);
                log::warn!("{}: read failed ({why})", self.name);
                if client.is_closed() || err.code().is_none() {
                    self.client = None;
                    self.down = Some(Instant::now());
                }
                Err(LoadError::Unavailable(why))
            }
        }
    }

    fn connect(&self) -> Result<(Client, Statement), postgres::Error> {
        let mut client = self
            .database
            .connect(&format!("order-service-{}", self.name))?;
        client.batch_execute(&format!("SET statement_timeout = '{STATEMENT_TIMEOUT}'"))?;
        let by_uids = store::prepare_load_by_uids(&mut client)?;
        Ok((client, by_uids))
    }
}

fn rejection(row: store::RejectionRow) -> Rejection {
    let shown = &row.payload[..row.payload.len().min(PAYLOAD_SHOWN)];
    Rejection {
        id: row.id,
        received_at: row.received_at,
        kind: row.kind,
        reason: row.reason,
        stream_sequence: row.stream_sequence,
        payload_length: row.payload_length,
        payload: escape_payload(shown),
        payload_truncated: i64::from(row.payload_length) > shown.len() as i64,
    }
}

/// Bytes as text: valid UTF-8 as it is, every other byte as `\xNN` (a
/// character cut at the 4 KiB edge too). Never U+FFFD: the escapes keep the
/// original bytes readable.
pub fn escape_payload(mut bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    loop {
        match std::str::from_utf8(bytes) {
            Ok(valid) => {
                text.push_str(valid);
                return text;
            }
            Err(err) => {
                let (valid, rest) = bytes.split_at(err.valid_up_to());
                // Checked just above.
                text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                let bad = err.error_len().unwrap_or(rest.len());
                for byte in &rest[..bad] {
                    text.push_str(&format!("\\x{byte:02x}"));
                }
                bytes = &rest[bad..];
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_escape_what_is_not_utf8() {
        assert_eq!(escape_payload(b"plain <b>"), "plain <b>");
        assert_eq!(escape_payload(b"a\xff\xfeb"), "a\\xff\\xfeb");
        assert_eq!(escape_payload("é".as_bytes()), "é");
        // A character cut at the edge: its first byte alone.
        assert_eq!(escape_payload(&"xé".as_bytes()[..2]), "x\\xc3");
        assert_eq!(escape_payload(b""), "");
    }

    #[test]
    fn a_full_queue_is_busy_and_waiters_of_one_uid_share_a_job() {
        let (loader, jobs) = channel();
        let waiter = {
            let loader = loader.clone();
            std::thread::spawn(move || loader.order("same"))
        };
        let second = {
            let loader = loader.clone();
            std::thread::spawn(move || loader.order("same"))
        };
        // Both wait on one queued job.
        let deadline = Instant::now() + Duration::from_secs(5);
        while lock(&jobs.shared.in_flight).get("same").map_or(0, Vec::len) < 2 {
            assert!(Instant::now() < deadline, "the waiters never queued");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(loader.queue_depth(), 1);
        let Ok(Job::Order(uid)) = jobs.jobs.try_recv() else {
            panic!("no order job queued");
        };
        answer_orders(&jobs.shared, vec![uid], Ok(Vec::new()));
        assert_eq!(waiter.join().unwrap(), Ok(None));
        assert_eq!(second.join().unwrap(), Ok(None));
        for i in 0..QUEUE {
            let (reply, _) = crossbeam_channel::bounded(1);
            loader
                .submit(Job::OrderPage {
                    before: Some(i as i64),
                    limit: 1,
                    reply,
                })
                .unwrap();
        }
        assert_eq!(loader.order("other"), Err(LoadError::Busy));
        assert!(lock(&jobs.shared.in_flight).is_empty());
    }

    #[test]
    fn a_parked_miss_no_loader_answers_gets_a_timeout_at_the_deadline_once() {
        let (mut loader, jobs) = channel();
        loader.deadline = Duration::from_millis(50);
        let (trigger, shutdown) = crate::lifecycle::shutdown_channel();
        let deadlines = std::thread::spawn(move || run_deadlines(jobs, shutdown));
        let (reply, answers) = crossbeam_channel::unbounded();
        let started = Instant::now();
        for _ in 0..2 {
            let reply = reply.clone();
            loader.order_then("stuck", Box::new(move |found| reply.send(found).unwrap()));
        }
        for _ in 0..2 {
            let answer = answers.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!(answer, Err(LoadError::Timeout));
        }
        assert!(started.elapsed() >= Duration::from_millis(50));
        // Shutdown answers what is still parked, at once, and ends it.
        loader.deadline = Duration::from_secs(60);
        loader.order_then("later", Box::new(move |found| reply.send(found).unwrap()));
        trigger.fire();
        deadlines.join().unwrap().unwrap();
        let answer = answers.recv_timeout(Duration::from_secs(1)).unwrap();
        assert!(
            matches!(answer, Err(LoadError::Unavailable(_))),
            "{answer:?}"
        );
        assert!(answers.try_recv().is_err(), "each callback runs once");
        assert_eq!(loader.stats().errors.load(Relaxed), 3);
    }

    #[test]
    fn an_unanswered_wait_times_out() {
        let (mut loader, _jobs) = channel();
        loader.deadline = Duration::from_millis(20);
        assert_eq!(loader.order_page(None, 10), Err(LoadError::Timeout));
    }
}
