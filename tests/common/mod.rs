//! The black-box test harness: a fresh database, fresh NATS names, the real
//! `order-service` binary as a child process on port 0, a confirmed
//! publisher, and private PostgreSQL / NATS servers (or a NATS cluster) for
//! the tests that stop one. Nothing is mocked; every wait is bounded.
//!
//! Invariant: whatever a test creates (database, stream, process, data
//! directory) is removed by a `Drop`, so a failing test cleans up too.

#![allow(dead_code)]
// nats 0.26 marks its whole sync API deprecated in favour of async-nats.
#![allow(deprecated)]

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use nats::jetstream::{
    AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy, JetStream, PublishAck, PublishOptions,
    StorageType, StreamConfig,
};
use serde_json::Value;

/// The shared PostgreSQL every test may use (trust auth).
pub const SHARED_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The shared NATS server with JetStream.
pub const SHARED_NATS: &str = "nats://127.0.0.1:4222";

// ---------------------------------------------------------------------------
// Names and waiting
// ---------------------------------------------------------------------------

/// `prefix` + `_` + 8 random lowercase letters and digits, e.g. `t_ab12cd34`.
pub fn unique(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let suffix: String = (0..8)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}_{suffix}")
}

/// Polls `f` every 20-200 ms until it returns true; panics naming `what`
/// when `timeout` passes first.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        if f() {
            eprintln!("[harness] waited {:?} for: {what}", start.elapsed());
            return;
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local_addr")
        .port()
}

/// `target/tmp` (Cargo's scratch directory for integration tests).
pub fn target_tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// `target/test-logs`: one file per started service or server.
pub fn log_dir() -> PathBuf {
    let dir = target_tmp()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(target_tmp)
        .join("test-logs");
    fs::create_dir_all(&dir).expect("create target/test-logs");
    dir
}

/// A log file name that says which test wrote it.
fn log_path(kind: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let test = thread::current()
        .name()
        .unwrap_or("unnamed")
        .replace("::", "-");
    log_dir().join(format!("{test}-{kind}-{n}-{}.log", std::process::id()))
}

/// The last `lines` lines of a text file, or a note that it is unreadable.
pub fn tail_of(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            all[from..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL: a fresh database per test
// ---------------------------------------------------------------------------

/// A fresh database with a random name on some server; dropped (with FORCE)
/// on `Drop`.
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl TestDb {
    /// A fresh database on the shared server.
    pub fn create() -> TestDb {
        TestDb::create_on(SHARED_POSTGRES)
    }

    pub fn create_on(admin_url: &str) -> TestDb {
        let name = unique("t");
        let mut admin = pg_connect(admin_url);
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {admin_url}: {e:?}"));
        TestDb {
            url: with_dbname(admin_url, &name),
            name,
            admin_url: admin_url.to_owned(),
        }
    }

    /// A new connection to this database.
    pub fn client(&self) -> postgres::Client {
        pg_connect(&self.url)
    }

    /// The first column of the first row of `sql`, as i64 (`count(*)` etc.).
    pub fn query_i64(&self, sql: &str) -> i64 {
        let mut client = self.client();
        scalar_i64(&mut client, sql)
    }

    /// Like `query_i64`, but `None` when the query fails (table not created
    /// yet, server down).
    pub fn try_query_i64(&self, sql: &str) -> Option<i64> {
        let mut client = try_pg_connect(&self.url).ok()?;
        let row = client.query_one(sql, &[]).ok()?;
        row.try_get::<_, i64>(0).ok()
    }

    /// `SELECT count(*) FROM orders`, or 0 before the table exists.
    pub fn order_count(&self) -> i64 {
        self.try_query_i64("SELECT count(*) FROM orders")
            .unwrap_or(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Best effort: the server may be a private one that is gone already.
        if let Ok(mut admin) = try_pg_connect(&self.admin_url) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// `admin_url` with its database name replaced by `dbname`.
pub fn with_dbname(admin_url: &str, dbname: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (admin_url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(query) => format!("{host_part}/{dbname}?{query}"),
        None => format!("{host_part}/{dbname}"),
    }
}

pub fn try_pg_connect(url: &str) -> Result<postgres::Client, postgres::Error> {
    let mut config: postgres::Config = url.parse()?;
    config.connect_timeout(Duration::from_secs(5));
    config.application_name("order-service-tests");
    config.connect(postgres::NoTls)
}

pub fn pg_connect(url: &str) -> postgres::Client {
    try_pg_connect(url).unwrap_or_else(|e| panic!("connect to {url}: {e:?}"))
}

pub fn scalar_i64(client: &mut postgres::Client, sql: &str) -> i64 {
    let row = client
        .query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    row.get::<_, i64>(0)
}

// ---------------------------------------------------------------------------
// NATS names, streams, consumers
// ---------------------------------------------------------------------------

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

fn nats_connect_once(nats_url: &str) -> std::io::Result<nats::Connection> {
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
    js.add_stream(StreamConfig {
        name: names.stream.clone(),
        subjects: vec![names.subject.clone()],
        storage: StorageType::File,
        duplicate_window: Duration::from_secs(120).as_nanos() as i64,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("add_stream {}: {e}", names.stream));
    js.add_consumer(
        &names.stream,
        ConsumerConfig {
            durable_name: Some(names.consumer.clone()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait,
            max_deliver: 100,
            max_ack_pending: 8192,
            filter_subject: names.subject.clone(),
            ..Default::default()
        },
    )
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

// ---------------------------------------------------------------------------
// Orders
// ---------------------------------------------------------------------------

/// `testdata/model.json`, the canonical order.
pub fn canonical_order() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/model.json");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("testdata/model.json is JSON")
}

/// The canonical order with `order_uid` and `payment.transaction` set to `uid`.
pub fn order_value(uid: &str) -> Value {
    let mut order = canonical_order();
    order["order_uid"] = Value::from(uid);
    order["payment"]["transaction"] = Value::from(uid);
    order
}

/// `order_value(uid)` serialised.
pub fn order_with_uid(uid: &str) -> Vec<u8> {
    serde_json::to_vec(&order_value(uid)).expect("serialise order")
}

/// `n` orders with fresh uids `<prefix>_<random>_<i>`, as `(uid, body)`
/// ready for `Publisher::publish_many`.
pub fn many_orders(prefix: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    let tag = unique(prefix);
    (0..n)
        .map(|i| {
            let uid = format!("{tag}_{i}");
            let body = order_with_uid(&uid);
            (uid, body)
        })
        .collect()
}

/// An order whose JSON is well over `min_bytes` (many items).
pub fn big_order(uid: &str, min_bytes: usize) -> Vec<u8> {
    let mut order = order_value(uid);
    let item = order["items"][0].clone();
    let mut items = Vec::new();
    let mut i = 0u64;
    while serde_json::to_vec(&items).unwrap().len() < min_bytes {
        let mut it = item.clone();
        it["chrt_id"] = Value::from(1_000_000 + i);
        it["rid"] = Value::from(format!("rid-{uid}-{i}"));
        items.push(it);
        i += 1;
    }
    order["items"] = Value::Array(items);
    serde_json::to_vec(&order).unwrap()
}

// ---------------------------------------------------------------------------
// The service as a child process
// ---------------------------------------------------------------------------

/// What one service process is pointed at.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub database_url: String,
    pub nats_url: String,
    pub names: NatsNames,
    pub extra_env: Vec<(String, String)>,
}

impl ServiceConfig {
    pub fn new(db: &TestDb, nats_url: &str, names: &NatsNames) -> ServiceConfig {
        ServiceConfig {
            database_url: db.url.clone(),
            nats_url: nats_url.to_owned(),
            names: names.clone(),
            extra_env: Vec::new(),
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> ServiceConfig {
        self.extra_env.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// Variables the service reads, which a test must not inherit by accident:
/// every `[env: NAME` the binary's `--help` lists (as
/// `tests/deploy/check_deploy.py` reads them), so a new setting needs no list
/// kept here.
fn service_env() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let output = Command::new(env!("CARGO_BIN_EXE_order-service"))
            .arg("--help")
            .output()
            .expect("run order-service --help");
        let help = String::from_utf8_lossy(&output.stdout);
        let names: Vec<String> = help
            .split("[env:")
            .skip(1)
            .map(|rest| {
                rest.trim_start()
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect::<String>()
            })
            .filter(|name| !name.is_empty())
            .collect();
        assert!(
            names.iter().any(|n| n == "DATABASE_URL") && names.iter().any(|n| n == "NATS_URL"),
            "no [env: …] names in order-service --help: {names:?}\n{help}"
        );
        names
    })
}

/// A running `order-service`. `Drop` kills it (SIGKILL) if it still runs.
pub struct Service {
    pub base_url: String,
    pub log_path: PathBuf,
    child: Child,
    exit: Option<ExitStatus>,
    agent: ureq::Agent,
}

/// One HTTP answer, whatever the status.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {}", self.text()))
    }
}

impl Service {
    /// `host:port` of its HTTP listener, for raw TCP clients.
    pub fn address(&self) -> String {
        self.base_url.trim_start_matches("http://").to_owned()
    }

    /// Spawns the binary on `127.0.0.1:0` and returns once it logged
    /// `listening on http://…` (all its output goes to a log file under
    /// `target/test-logs/`).
    pub fn start(cfg: &ServiceConfig) -> Service {
        let log_path = log_path("service");
        let log = File::create(&log_path).expect("create service log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_order-service"));
        for key in service_env() {
            command.env_remove(key);
        }
        command
            .env("DATABASE_URL", &cfg.database_url)
            .env("NATS_URL", &cfg.nats_url)
            .env("NATS_STREAM", &cfg.names.stream)
            .env("NATS_SUBJECT", &cfg.names.subject)
            .env("NATS_CONSUMER", &cfg.names.consumer)
            .env("HTTP_ADDR", "127.0.0.1:0")
            .env("HTTP_WORKERS", "4")
            .env("RUST_LOG", "info");
        for (key, value) in &cfg.extra_env {
            command.env(key, value);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone log file")))
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", env!("CARGO_BIN_EXE_order-service")));
        eprintln!(
            "[harness] order-service pid {} log {}",
            child.id(),
            log_path.display()
        );

        // Tee stderr into the log file and hand over the listening address.
        let stderr = child.stderr.take().expect("piped stderr");
        let (addr_tx, addr_rx) = mpsc::channel::<String>();
        thread::Builder::new()
            .name("service-stderr".into())
            .spawn(move || {
                let mut log = log;
                let mut reader = BufReader::new(stderr);
                let mut line = Vec::new();
                let mut addr_tx = Some(addr_tx);
                loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let _ = log.write_all(&line);
                            let _ = log.flush();
                            let text = String::from_utf8_lossy(&line);
                            if let Some(i) = text.find("listening on http://") {
                                let rest = &text[i + "listening on ".len()..];
                                let url: String = rest
                                    .chars()
                                    .take_while(|c| !c.is_whitespace() && *c != '"')
                                    .collect();
                                if let Some(tx) = addr_tx.take() {
                                    let _ = tx.send(url.trim_end_matches('/').to_owned());
                                }
                            }
                        }
                    }
                }
            })
            .expect("spawn stderr reader");

        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();

        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match addr_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(base_url) => {
                    return Service {
                        base_url,
                        log_path,
                        child,
                        exit: None,
                        agent,
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().ok();
                    panic!(
                        "order-service exited ({status:?}) before logging `listening on`; log:\n{}",
                        tail_of(&log_path, 60)
                    );
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                thread::sleep(Duration::from_millis(200));
                panic!(
                    "order-service exited ({status}) before logging `listening on`; log:\n{}",
                    tail_of(&log_path, 60)
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "order-service did not log `listening on` within 60 s; log:\n{}",
                    tail_of(&log_path, 60)
                );
            }
        }
    }

    /// Starts the service and waits until `/readyz` says 200.
    pub fn start_ready(cfg: &ServiceConfig) -> Service {
        let service = Service::start(cfg);
        service.wait_ready(Duration::from_secs(60));
        service
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `/readyz` until 200; panics with the last answer and the log.
    pub fn wait_ready(&self, timeout: Duration) {
        self.wait_readyz(200, timeout);
    }

    /// Polls `/readyz` until it answers `status`.
    pub fn wait_readyz(&self, status: u16, timeout: Duration) {
        let start = Instant::now();
        let mut last;
        loop {
            match self.try_request("GET", "/readyz") {
                Ok(resp) if resp.status == status => return,
                Ok(resp) => last = format!("{} {}", resp.status, resp.text()),
                Err(err) => last = err,
            }
            if start.elapsed() > timeout {
                panic!(
                    "/readyz did not answer {status} within {timeout:?}; last answer: {last}\nlog:\n{}",
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }

    /// SIGTERM, then wait up to 20 s for the exit (SIGKILL and panic after).
    pub fn terminate(&mut self) -> ExitStatus {
        self.terminate_within(Duration::from_secs(20))
    }

    /// SIGTERM, then wait up to `timeout` for the exit (SIGKILL and panic after).
    pub fn terminate_within(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        self.signal(libc::SIGTERM);
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
                return status;
            }
            if start.elapsed() > timeout {
                self.kill9();
                panic!(
                    "order-service did not exit within {timeout:?} of SIGTERM; log:\n{}",
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics with the log's tail unless the process still runs.
    pub fn assert_running(&mut self) {
        assert!(
            self.is_running(),
            "the service exited:\n{}",
            self.log_tail()
        );
    }

    /// SIGTERM, then asserts a clean exit: status 0 within 10 s (killed
    /// and failed at 15 s). Returns how long the exit took.
    pub fn assert_clean_exit(&mut self) -> Duration {
        let asked = Instant::now();
        let status = self.terminate_within(Duration::from_secs(15));
        let took = asked.elapsed();
        assert!(
            status.success(),
            "exit status after SIGTERM: {status}\nlog:\n{}",
            self.log_tail()
        );
        assert!(took < Duration::from_secs(10), "exit took {took:?}");
        took
    }

    /// Sends a signal to the child (no-op once it has been reaped).
    pub fn signal(&mut self, signal: libc::c_int) {
        if self.exit.is_none() {
            // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, signal);
            }
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exit = Some(status);
                false
            }
            _ => true,
        }
    }

    /// A request of any method; transport errors are `Err` with a message.
    pub fn try_request(&self, method: &str, path: &str) -> Result<HttpResponse, String> {
        let url = format!("{}{}", self.base_url, path);
        let result = match method {
            "GET" => self.agent.get(&url).call(),
            "HEAD" => self.agent.head(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            "OPTIONS" => self.agent.options(&url).call(),
            "POST" => self.agent.post(&url).send(&b"{}"[..]),
            "PUT" => self.agent.put(&url).send(&b"{}"[..]),
            "PATCH" => self.agent.patch(&url).send(&b"{}"[..]),
            other => return Err(format!("unsupported method {other}")),
        };
        let mut response = result.map_err(|e| format!("{method} {url}: {e}"))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = if method == "HEAD" {
            Vec::new()
        } else {
            response
                .body_mut()
                .with_config()
                .limit(64 * 1024 * 1024)
                .read_to_vec()
                .map_err(|e| format!("{method} {url}: reading body: {e}"))?
        };
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }

    /// A request that must get an answer (panics with the log otherwise).
    pub fn request(&self, method: &str, path: &str) -> HttpResponse {
        self.try_request(method, path)
            .unwrap_or_else(|e| panic!("{e}\nlog:\n{}", self.log_tail()))
    }

    /// `GET path` → (status, body as text).
    pub fn get(&self, path: &str) -> (u16, String) {
        let resp = self.request("GET", path);
        (resp.status, resp.text())
    }

    /// `GET path` → the whole answer.
    pub fn get_full(&self, path: &str) -> HttpResponse {
        self.request("GET", path)
    }

    /// `GET path` → (status, body parsed as JSON).
    pub fn get_json(&self, path: &str) -> (u16, Value) {
        let resp = self.request("GET", path);
        let value = resp.json();
        (resp.status, value)
    }

    /// `GET /orders/{uid}` status.
    pub fn order_status(&self, uid: &str) -> u16 {
        self.request("GET", &format!("/orders/{uid}")).status
    }

    /// `GET /metrics` as text.
    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "/metrics: {body}");
        body
    }

    /// The value of the first sample in `/metrics` named `name` whose labels
    /// include every `key="value"` in `labels`; `None` if there is none.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics(), name, labels)
    }

    pub fn log_tail(&self) -> String {
        tail_of(&self.log_path, 80)
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Finds a sample in Prometheus text: `name{labels} value` or `name value`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value_text) = if let Some(after) = rest.strip_prefix('{') {
            // Label values may hold '}' (route="/orders/{order_uid}"): find
            // the closing brace outside quotes.
            let Some(end) = closing_brace(after) else {
                continue;
            };
            (&after[..end], after[end + 1..].trim())
        } else if rest.starts_with(' ') {
            ("", rest.trim())
        } else {
            continue;
        };
        let all_match = labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
        if !all_match {
            continue;
        }
        let number = value_text.split_whitespace().next()?;
        return number.parse().ok();
    }
    None
}

/// The index of the `}` that ends a label set, skipping quoted values.
fn closing_brace(text: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return Some(i),
            _ => {}
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Publishing with confirmation
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Private servers, for tests that stop or kill one
// ---------------------------------------------------------------------------

/// Calls `attempt` up to `times` times, `pause` apart, until it succeeds;
/// the last error when none did.
fn retry(
    times: usize,
    pause: Duration,
    mut attempt: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let mut last = String::from("never attempted");
    for _ in 0..times {
        match attempt() {
            Ok(()) => return Ok(()),
            Err(err) => {
                last = err;
                thread::sleep(pause);
            }
        }
    }
    Err(last)
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether a process with this pid exists.
fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 sends nothing; it only checks the pid.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn postgres_bin(tool: &str) -> PathBuf {
    for dir in ["/usr/lib/postgresql/15/bin", "/usr/local/bin", "/usr/bin"] {
        let path = Path::new(dir).join(tool);
        if path.exists() {
            return path;
        }
    }
    PathBuf::from(tool)
}

/// A command for a PostgreSQL tool, run as the `postgres` user when we are
/// root (initdb and postgres refuse to run as root).
fn postgres_command(tool: &str) -> Command {
    if running_as_root() {
        let mut command = Command::new("runuser");
        command
            .args(["-u", "postgres", "--"])
            .arg(postgres_bin(tool));
        command
    } else {
        Command::new(postgres_bin(tool))
    }
}

fn run_checked(mut command: Command, what: &str) -> String {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{text}",
        output.status
    );
    text
}

/// A throwaway PostgreSQL cluster under `target/tmp`, on a free port,
/// with trust auth for `postgres`. `Drop` stops it and removes its files.
pub struct PrivatePostgres {
    pub port: u16,
    pub admin_url: String,
    pub dir: PathBuf,
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let dir = target_tmp().join(unique("pg"));
        fs::create_dir_all(&dir).expect("create private postgres dir");
        let data = dir.join("data");
        if running_as_root() {
            run_checked(
                {
                    let mut c = Command::new("chown");
                    c.arg("-R").arg("postgres:postgres").arg(&dir);
                    c
                },
                "chown private postgres dir",
            );
        }
        let mut initdb = postgres_command("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .args(["--locale", "C"]);
        run_checked(initdb, "initdb");
        let mut pg = PrivatePostgres {
            port: 0,
            admin_url: String::new(),
            dir,
        };
        // A port found free may be taken before the postmaster binds it.
        let mut last_error = String::new();
        for _ in 0..3 {
            pg.port = free_port();
            pg.admin_url = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
            match pg.try_start() {
                Ok(()) => return pg,
                Err(err) => last_error = err,
            }
        }
        panic!("private PostgreSQL did not start: {last_error}");
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn server_log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn try_start(&self) -> Result<(), String> {
        self.wait_postmaster_gone(Duration::from_secs(10));
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50",
            self.port,
            self.data_dir().display()
        );
        let mut command = postgres_command("pg_ctl");
        command
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.server_log())
            .args(["-o", &options, "-w", "-t", "30", "start"]);
        let output = command
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("pg_ctl start: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "pg_ctl start ({}): {}{}\nserver log:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                tail_of(&self.server_log(), 20)
            ));
        }
        // pg_ctl -w waits for connections to be accepted; check anyway.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if try_pg_connect(&self.admin_url).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "private PostgreSQL on port {} does not accept connections; log:\n{}",
                    self.port,
                    tail_of(&self.server_log(), 20)
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The postmaster's pid from its pid file, if the file is there.
    fn postmaster_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Waits until no postmaster runs for this data directory (the pid file
    /// of a killed postmaster lingers a moment).
    fn wait_postmaster_gone(&self, timeout: Duration) {
        let start = Instant::now();
        while let Some(pid) = self.postmaster_pid() {
            if !pid_alive(pid) {
                return;
            }
            if start.elapsed() > timeout {
                panic!("postmaster {pid} still running after {timeout:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&self, mode: &str) {
        let mut command = postgres_command("pg_ctl");
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", mode, "-w", "-t", "30", "stop"]);
        let output = command.stdin(Stdio::null()).output();
        if let Ok(output) = &output {
            if !output.status.success() {
                eprintln!(
                    "[harness] pg_ctl stop -m {mode}: {}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
        self.wait_postmaster_gone(Duration::from_secs(15));
    }

    /// `pg_ctl stop -m fast`: sessions are ended, the server shuts down cleanly.
    pub fn stop_fast(&self) {
        self.stop("fast");
    }

    /// `pg_ctl stop -m immediate`: like a crash; recovery runs at the next start.
    pub fn stop_immediate(&self) {
        self.stop("immediate");
    }

    /// Whether a postmaster runs for this data directory.
    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some_and(pid_alive)
    }

    /// Starts the server again on the same port (stopping it first if it
    /// runs).
    pub fn restart(&self) {
        if self.is_running() {
            self.stop_fast();
        }
        if let Err(last) = retry(3, Duration::from_millis(500), || self.try_start()) {
            panic!("private PostgreSQL did not restart: {last}");
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.is_running() {
            self.stop("immediate");
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A throwaway `nats-server -js` on a free port with its store under
/// `target/tmp`. `Drop` kills it and removes its files.
pub struct PrivateNats {
    pub port: u16,
    pub url: String,
    pub dir: PathBuf,
    /// The server name (`-n`), set for cluster nodes.
    pub name: Option<String>,
    /// `--cluster_name`, `--cluster`, `--routes` for a cluster node.
    cluster_args: Vec<String>,
    child: Option<Child>,
    log_path: PathBuf,
}

impl PrivateNats {
    pub fn start() -> PrivateNats {
        let mut last = String::new();
        for _ in 0..3 {
            let mut nats = PrivateNats::new(free_port(), None, Vec::new());
            match nats.spawn() {
                Ok(()) => return nats,
                Err(err) => last = err,
            }
        }
        panic!("private nats-server did not start: {last}");
    }

    fn new(port: u16, name: Option<String>, cluster_args: Vec<String>) -> PrivateNats {
        let dir = target_tmp().join(unique("nats"));
        fs::create_dir_all(&dir).expect("create private nats dir");
        PrivateNats {
            port,
            url: format!("nats://127.0.0.1:{port}"),
            dir,
            name,
            cluster_args,
            child: None,
            log_path: log_path("nats-server"),
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| format!("open nats log: {e}"))?;
        let mut command = Command::new("nats-server");
        command.arg("-js").arg("-sd").arg(&self.dir).args([
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
        ]);
        if let Some(name) = &self.name {
            command.args(["-n", name]);
        }
        command.args(&self.cluster_args);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().map_err(|e| e.to_string())?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("spawn nats-server: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "nats-server exited ({status}); log:\n{}",
                    tail_of(&self.log_path, 20)
                ));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                // A cluster node's JetStream answers only once a quorum of
                // nodes is up: the cluster checks that, not each node.
                if !self.cluster_args.is_empty() {
                    self.child = Some(child);
                    return Ok(());
                }
                if let Ok(nc) = nats_connect_once(&self.url) {
                    let js = nats::jetstream::new(nc.clone());
                    let ready = js.account_info().is_ok();
                    nc.close();
                    if ready {
                        self.child = Some(child);
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "nats-server on port {} not ready in 15 s; log:\n{}",
                    self.port,
                    tail_of(&self.log_path, 20)
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL the server (its stream survives on disk).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the server process runs.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Starts the server again on the same port and store (killing it
    /// first if it runs).
    pub fn restart(&mut self) {
        self.kill9();
        if let Err(last) = retry(10, Duration::from_millis(300), || self.spawn()) {
            panic!(
                "private nats-server did not restart on port {}: {last}",
                self.port
            );
        }
    }

    pub fn log_tail(&self) -> String {
        tail_of(&self.log_path, 40)
    }
}

/// Three (or more) `nats-server -js` processes clustered on loopback, each
/// with its own store, client port and route port. JetStream is ready (a
/// meta leader elected, an R3 stream can be created) when `start` returns.
/// `Drop` kills every node and removes their files.
pub struct PrivateNatsCluster {
    pub nodes: Vec<PrivateNats>,
}

impl PrivateNatsCluster {
    pub fn start(size: usize) -> PrivateNatsCluster {
        let mut last = String::new();
        for _ in 0..3 {
            match PrivateNatsCluster::try_start(size) {
                Ok(cluster) => return cluster,
                Err(err) => last = err,
            }
        }
        panic!("private NATS cluster did not start: {last}");
    }

    fn try_start(size: usize) -> Result<PrivateNatsCluster, String> {
        let route_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let mut cluster = PrivateNatsCluster { nodes: Vec::new() };
        for (i, route_port) in route_ports.iter().enumerate() {
            let routes: Vec<String> = route_ports
                .iter()
                .filter(|p| *p != route_port)
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            let args = vec![
                "--cluster_name".to_owned(),
                "c".to_owned(),
                "--cluster".to_owned(),
                format!("nats://127.0.0.1:{route_port}"),
                "--routes".to_owned(),
                routes.join(","),
            ];
            let mut node = PrivateNats::new(free_port(), Some(format!("n{}", i + 1)), args);
            node.spawn()?;
            cluster.nodes.push(node);
        }
        cluster.wait_jetstream(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// Waits until an R3 stream can be created and deleted through the
    /// cluster (a meta leader is elected and every peer is known).
    fn wait_jetstream(&self, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        let probe = unique("probe");
        let mut last = String::new();
        while start.elapsed() < timeout {
            if let Ok(nc) = nats_connect_once(&self.urls()) {
                let js = nats::jetstream::new(nc.clone());
                let created = js.add_stream(StreamConfig {
                    name: probe.clone(),
                    subjects: vec![probe.clone()],
                    num_replicas: self.nodes.len().min(3),
                    ..Default::default()
                });
                match created {
                    Ok(_) => {
                        let _ = js.delete_stream(&probe);
                        nc.close();
                        return Ok(());
                    }
                    Err(err) => last = err.to_string(),
                }
                nc.close();
            }
            thread::sleep(Duration::from_millis(200));
        }
        Err(format!(
            "NATS cluster JetStream not ready in {timeout:?}: {last}; log of n1:\n{}",
            self.nodes[0].log_tail()
        ))
    }

    /// Every node's client URL, comma-separated (for `NATS_URL`).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node named `name` (`n1`, `n2`, ...).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.name.as_deref() == Some(name))
    }

    /// The name of the stream's RAFT leader, asked through any live node.
    pub fn stream_leader(&self, stream: &str) -> Option<String> {
        let nc = nats_connect_once(&self.urls()).ok()?;
        let js = nats::jetstream::new(nc.clone());
        let leader = js.stream_info(stream).ok()?.cluster.leader;
        nc.close();
        leader
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill9();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// Small helpers for reading files the service wrote
// ---------------------------------------------------------------------------

/// Reads a file from `offset` to its end (for following a log).
pub fn read_from(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        if file.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = file.read_to_string(&mut text);
        }
    }
    text
}

/// A fresh database and fresh NATS names, and the configuration of a service
/// on them: where a test that starts, kills and restarts its own services
/// begins. On the shared servers, or on a private one the test will stop.
pub struct Setup {
    pub db: TestDb,
    pub names: NatsNames,
    pub nats_url: String,
    pub cfg: ServiceConfig,
    _stream: Option<StreamGuard>,
}

impl Setup {
    /// The shared PostgreSQL and NATS; the stream is deleted on `Drop`.
    pub fn shared() -> Setup {
        Setup::new(SHARED_POSTGRES, SHARED_NATS, true)
    }

    /// A database on the PostgreSQL at `admin_url` (a private one), the
    /// shared NATS; the stream is deleted on `Drop`.
    pub fn with_postgres(admin_url: &str) -> Setup {
        Setup::new(admin_url, SHARED_NATS, true)
    }

    /// The shared PostgreSQL, the NATS server(s) at `nats_url` (private
    /// ones: the stream goes with their data directory).
    pub fn with_nats(nats_url: &str) -> Setup {
        Setup::new(SHARED_POSTGRES, nats_url, false)
    }

    fn new(admin_url: &str, nats_url: &str, guard: bool) -> Setup {
        let db = TestDb::create_on(admin_url);
        let names = NatsNames::unique();
        let stream = guard.then(|| names.guard(nats_url));
        let cfg = ServiceConfig::new(&db, nats_url, &names);
        Setup {
            db,
            names,
            nats_url: nats_url.to_owned(),
            cfg,
            _stream: stream,
        }
    }

    /// Adds a variable to the services' environment.
    pub fn env(mut self, key: &str, value: &str) -> Setup {
        self.cfg = self.cfg.env(key, value);
        self
    }

    pub fn start(&self) -> Service {
        Service::start(&self.cfg)
    }

    pub fn start_ready(&self) -> Service {
        Service::start_ready(&self.cfg)
    }

    /// Starts `n` replicas together (migrations and stream creation race,
    /// as in a real roll-out) and waits until all are ready.
    pub fn replicas(&self, n: usize) -> Vec<Service> {
        let services: Vec<Service> = (0..n).map(|_| self.start()).collect();
        for service in &services {
            service.wait_ready(Duration::from_secs(60));
        }
        services
    }

    pub fn publisher(&self) -> Publisher {
        Publisher::connect(&self.nats_url)
    }

    /// Publishes `orders` from another thread, `chunk` at a time with
    /// `pause` between chunks, and returns once `under_way` of them are
    /// stored: ingest is going on when the test breaks something.
    pub fn ingest_in_background(
        &self,
        orders: &[(String, Vec<u8>)],
        chunk: usize,
        pause: Duration,
        under_way: i64,
    ) -> thread::JoinHandle<()> {
        let publishing =
            publish_in_background(&self.nats_url, &self.names.subject, orders, chunk, pause);
        wait_until(
            Duration::from_secs(30),
            &format!("ingest under way ({under_way} stored)"),
            || self.db.order_count() >= under_way,
        );
        publishing
    }

    /// Waits until `orders` holds exactly `n` rows.
    pub fn wait_stored(&self, n: usize, timeout: Duration) {
        wait_until(timeout, &format!("all {n} orders stored"), || {
            self.db.order_count() == n as i64
        });
    }

    /// Waits until the consumer has nothing pending and nothing unacked.
    pub fn wait_drained(&self, timeout: Duration) {
        wait_consumer_drained(&self.nats_url, &self.names, timeout);
    }

    /// The durable consumer's state; panics when it does not exist.
    pub fn consumer(&self) -> ConsumerState {
        consumer_info(&self.nats_url, &self.names).expect("the consumer exists")
    }

    /// After a fault, once every order is stored: the consumer drains and
    /// every one of `services` caches all `orders` (each wait bounded by
    /// `timeout`), the caches are identical, and every order is stored once.
    pub fn assert_settled(
        &self,
        orders: &[(String, Vec<u8>)],
        services: &[&Service],
        timeout: Duration,
    ) {
        self.wait_drained(timeout);
        wait_all_cached(services, orders.len() as u64, timeout);
        assert_identical_caches(services);
        self.assert_all_stored_once(orders);
    }

    /// Rows for `orders`, none missing, none that were never published,
    /// nothing dead-lettered.
    pub fn assert_all_stored_once(&self, orders: &[(String, Vec<u8>)]) {
        let uids: Vec<String> = orders.iter().map(|(uid, _)| uid.clone()).collect();
        let (rows, missing) = stored_of(&self.db, &uids);
        assert_eq!(missing, 0, "{missing} of {} orders lost", orders.len());
        assert_eq!(
            self.db.order_count(),
            rows,
            "rows that were never published"
        );
        assert_eq!(
            self.db.query_i64("SELECT count(*) FROM rejected_messages"),
            0,
            "a valid order was dead-lettered"
        );
    }
}

/// One service on the shared servers, with its own database, stream and
/// consumer, and a publisher: the world most story tests start from.
pub struct World {
    pub service: Service,
    pub db: TestDb,
    pub names: NatsNames,
    pub publisher: Publisher,
    _stream: Option<StreamGuard>,
}

impl World {
    pub fn start(extra_env: &[(&str, &str)]) -> World {
        let setup = extra_env
            .iter()
            .fold(Setup::shared(), |setup, (key, value)| setup.env(key, value));
        let service = setup.start_ready();
        let publisher = setup.publisher();
        let Setup {
            db, names, _stream, ..
        } = setup;
        World {
            service,
            db,
            names,
            publisher,
            _stream,
        }
    }
}

// ---------------------------------------------------------------------------
// Replicas: caches, digests, shares of the work; processes' resources
// ---------------------------------------------------------------------------

impl Service {
    /// `order_service_cache_orders`, 0 when the metric is missing.
    pub fn cached_orders(&self) -> u64 {
        self.metric("order_service_cache_orders", &[])
            .unwrap_or(0.0) as u64
    }

    /// `order_service_orders_stored_total`: orders this process inserted.
    pub fn stored_total(&self) -> u64 {
        self.metric("order_service_orders_stored_total", &[])
            .unwrap_or(0.0) as u64
    }

    /// `order_service_duplicates_total`: redelivered or republished orders
    /// this process found already stored.
    pub fn duplicates_total(&self) -> u64 {
        self.metric("order_service_duplicates_total", &[])
            .unwrap_or(0.0) as u64
    }

    /// The `digest` label of `order_service_cache_digest_info`: equal on two
    /// replicas when their caches hold the same orders with the same bytes.
    pub fn cache_digest(&self) -> String {
        let metrics = self.metrics();
        metrics
            .lines()
            .find(|l| l.starts_with("order_service_cache_digest_info{"))
            .and_then(|l| l.split("digest=\"").nth(1))
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no order_service_cache_digest_info in:\n{metrics}"))
            .to_owned()
    }

    /// Resident memory, threads and open descriptors of the process.
    pub fn proc_stats(&self) -> ProcStats {
        proc_stats(self.pid())
    }
}

/// Waits until every service caches exactly `n` orders.
pub fn wait_all_cached(services: &[&Service], n: u64, timeout: Duration) {
    wait_until(timeout, &format!("every replica caches {n} orders"), || {
        services.iter().all(|s| s.cached_orders() == n)
    });
}

/// Panics unless every service reports the same cache digest and count.
pub fn assert_identical_caches(services: &[&Service]) {
    let seen: Vec<(String, u64)> = services
        .iter()
        .map(|s| (s.cache_digest(), s.cached_orders()))
        .collect();
    assert!(
        seen.iter().all(|d| *d == seen[0]),
        "caches differ (digest, orders): {seen:?}"
    );
}

/// What `/proc` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStats {
    pub rss_kib: u64,
    pub threads: u64,
    pub fds: u64,
}

pub fn proc_stats(pid: u32) -> ProcStats {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    ProcStats {
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
        fds,
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

/// Counts rows and distinct uids of `uids` in `orders`: (rows of those
/// uids, uids missing).
pub fn stored_of(db: &TestDb, uids: &[String]) -> (i64, usize) {
    let mut client = db.client();
    let rows: i64 = client
        .query_one(
            "SELECT count(*) FROM orders WHERE order_uid = ANY($1)",
            &[&uids],
        )
        .expect("count stored uids")
        .get(0);
    (rows, uids.len() - rows as usize)
}
