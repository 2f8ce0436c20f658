//! What every part of the harness leans on: unique names, bounded waiting,
//! ports for private servers, and the log files under `target/test-logs`.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

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
pub(super) fn log_path(kind: &str) -> PathBuf {
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
