//! The service as a child process: its configuration, start-up on port 0
//! (learned from its C1 start-up line), signals and exit; `Setup` and
//! `World`, where tests begin; what several replicas must agree on; and
//! `/proc` figures.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{
    consumer_info, log_path, publish_in_background, stored_of, tail_of, wait_consumer_drained,
    wait_until, ConsumerState, NatsNames, Publisher, StreamGuard, TestDb, SHARED_NATS,
    SHARED_POSTGRES,
};

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

/// The `http_addr` of the start-up line (C1), or the line itself when it is
/// not that JSON object.
fn http_addr_of(line: &[u8]) -> Result<String, String> {
    serde_json::from_slice::<Value>(line)
        .ok()
        .and_then(|v| v.get("http_addr")?.as_str().map(str::to_owned))
        .ok_or_else(|| String::from_utf8_lossy(line).trim_end().to_owned())
}

/// A running `order-service`. `Drop` kills it (SIGKILL) if it still runs.
pub struct Service {
    pub base_url: String,
    pub log_path: PathBuf,
    child: Child,
    exit: Option<ExitStatus>,
    pub(super) agent: ureq::Agent,
}

impl Service {
    /// `host:port` of its HTTP listener, for raw TCP clients.
    pub fn address(&self) -> String {
        self.base_url.trim_start_matches("http://").to_owned()
    }

    /// Spawns the binary with `HTTP_ADDR=127.0.0.1:0` and returns once it
    /// wrote its start-up line to stdout, `{"http_addr":"127.0.0.1:PORT"}`
    /// (contract C1): the kernel picks the port, so no test races another
    /// for one, and no log text is parsed. Stderr, and stdout after that
    /// line, go to a log file under `target/test-logs/`.
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
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log.try_clone().expect("clone log file")));
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", env!("CARGO_BIN_EXE_order-service")));
        eprintln!(
            "[harness] order-service pid {} log {}",
            child.id(),
            log_path.display()
        );

        // Hand over the address from the first stdout line, then keep
        // draining stdout into the log: the pipe never fills or closes
        // under the service, and anything else it prints is seen there.
        let stdout = child.stdout.take().expect("piped stdout");
        let (addr_tx, addr_rx) = mpsc::channel::<Result<String, String>>();
        thread::Builder::new()
            .name("service-stdout".into())
            .spawn(move || {
                let mut log = log;
                let mut reader = BufReader::new(stdout);
                let mut line = Vec::new();
                let mut addr_tx = Some(addr_tx);
                loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let _ = log.write_all(&line);
                            let _ = log.flush();
                            if let Some(tx) = addr_tx.take() {
                                let _ = tx.send(http_addr_of(&line).map(|a| format!("http://{a}")));
                            }
                        }
                    }
                }
            })
            .expect("spawn stdout reader");

        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();

        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match addr_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(base_url)) => {
                    return Service {
                        base_url,
                        log_path,
                        child,
                        exit: None,
                        agent,
                    }
                }
                Ok(Err(bad_line)) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "order-service's first stdout line is not {{\"http_addr\":…}}: {bad_line}; log:\n{}",
                        tail_of(&log_path, 60)
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().ok();
                    panic!(
                        "order-service exited ({status:?}) before its start-up line; log:\n{}",
                        tail_of(&log_path, 60)
                    );
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                thread::sleep(Duration::from_millis(200));
                panic!(
                    "order-service exited ({status}) before its start-up line; log:\n{}",
                    tail_of(&log_path, 60)
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "order-service wrote no start-up line within 60 s; log:\n{}",
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

    /// Resident memory, threads and open descriptors of the process.
    pub fn proc_stats(&self) -> ProcStats {
        proc_stats(self.pid())
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
