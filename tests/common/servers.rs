//! Private PostgreSQL and NATS servers (and a NATS cluster), for the tests
//! that stop, kill or partition one; the shared servers are never touched.
//! Each listens on a port chosen up front (`free_port`), since the server
//! must be restarted on the same one.

// nats 0.26 marks its whole sync API deprecated in favour of async-nats.
#![allow(deprecated)]

use std::fs::{self, OpenOptions};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nats::jetstream::StreamConfig;

use super::nats::nats_connect_once;
use super::{free_port, log_path, tail_of, target_tmp, try_pg_connect, unique};

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
