//! The pusher binary against the real NATS (the shared server, a stream of
//! its own): every message confirmed, the stream holds each once, and a
//! repeat run with the same seed is all duplicates.

// nats 0.26 marks its whole sync API deprecated in favour of async-nats.
#![allow(deprecated)]

use serde_json::Value;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

const NATS_URL: &str = "nats://127.0.0.1:4222";

/// Deletes the test's stream however the test ends.
struct StreamGuard(String);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Ok(nc) = nats::connect(NATS_URL) {
            let _ = nats::jetstream::new(nc.clone()).delete_stream(&self.0);
            nc.close();
        }
    }
}

fn pusher(stream: &str, subject: &str, args: &str) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_pusher"))
        .env("NATS_URL", NATS_URL)
        .env("NATS_STREAM", stream)
        .env("NATS_SUBJECT", subject)
        .args(args.split_whitespace())
        .args(["--json", "--drain-timeout", "30s"])
        .output()
        .expect("run pusher");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "pusher failed: {stdout}\n{stderr}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"))
}

fn stream_messages(stream: &str) -> u64 {
    let nc = nats::connect(NATS_URL).expect("connect to NATS");
    let info = nats::jetstream::new(nc.clone())
        .stream_info(stream)
        .expect("stream info");
    nc.close();
    info.state.messages
}

#[test]
fn every_message_is_confirmed_and_stored_once() {
    let tag = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000;
    let stream = format!("PUSHER_TEST_{tag}_{}", std::process::id());
    let subject = format!("pusher_test.{tag}.{}", std::process::id());
    let _guard = StreamGuard(stream.clone());

    let first = pusher(&stream, &subject, "--count 500 --seed 11");
    assert_eq!(first["sent"], 500, "{first}");
    assert_eq!(first["confirmed"], 500, "{first}");
    assert_eq!(first["failed"], 0, "{first}");
    assert_eq!(first["duplicates"], 0, "{first}");
    assert_eq!(stream_messages(&stream), 500);

    // Same seed, same Nats-Msg-Ids: the stream's duplicate window drops them all.
    let again = pusher(&stream, &subject, "--count 500 --seed 11");
    assert_eq!(again["confirmed"], 500, "{again}");
    assert_eq!(again["duplicates"], 500, "{again}");
    assert_eq!(stream_messages(&stream), 500);

    // Invalid messages and duplicates on purpose are confirmed like any other.
    let args = "--count 300 --invalid 0.3 --duplicates 0.1 --seed 12";
    let mixed = pusher(&stream, &subject, args);
    assert_eq!(mixed["confirmed"], 300, "{mixed}");
    assert_eq!(mixed["duplicates"], mixed["duplicates_sent"], "{mixed}");
    let stored = 300 - mixed["duplicates_sent"].as_u64().unwrap();
    assert_eq!(stream_messages(&stream), 500 + stored);
}

#[test]
fn print_mode_needs_no_server_and_is_reproducible() {
    let run = |seed: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_pusher"))
            .env("NATS_URL", "nats://127.0.0.1:1")
            .args("--print --count 50 --invalid 0.2 --seed".split(' '))
            .arg(seed)
            .output()
            .expect("run pusher");
        assert!(output.status.success());
        output.stdout
    };
    let a = run("5");
    assert_eq!(a, run("5"));
    assert_ne!(a, run("6"));
    let lines = a.split(|&b| b == b'\n').filter(|l| !l.is_empty());
    assert_eq!(lines.count(), 50);
}

#[test]
fn unreachable_nats_is_one_clear_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_pusher"))
        .env("NATS_URL", "nats://127.0.0.1:1")
        .args(["--count", "1"])
        .output()
        .expect("run pusher");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("pusher: cannot connect to NATS at nats://127.0.0.1:1"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
