//! User story: "a log pipeline reads the service's logs". With
//! `LOG_FORMAT=json` everything the service writes on stderr, from start-up
//! to a fatal error, is one JSON object per line, and a dead letter's or a
//! conflict's line carries the message's `stream_sequence` and the order's
//! `order_uid` as fields. One running service per test, on the shared
//! servers.

pub mod common;

use common::*;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Parses every line as a JSON object with the four fixed keys; panics
/// naming the first line that is not one.
fn parse_json_lines(log: &str) -> Vec<Value> {
    assert!(!log.trim().is_empty(), "nothing was logged");
    log.lines()
        .map(|line| {
            let object: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line:?}"));
            for key in ["timestamp", "level", "target", "message"] {
                assert!(
                    object[key].is_string(),
                    "a log line has no string {key:?}: {line:?}"
                );
            }
            object
        })
        .collect()
}

/// The first logged object whose message contains `text` and whose
/// `field` equals `value`.
fn find<'a>(lines: &'a [Value], text: &str, field: &str, value: &Value) -> Option<&'a Value> {
    lines
        .iter()
        .find(|l| l["message"].as_str().unwrap_or("").contains(text) && &l[field] == value)
}

#[test]
fn json_logs_are_one_object_per_line_and_dead_letters_carry_their_stream_sequence() {
    let mut w = World::start(&[("LOG_FORMAT", "json")]);
    // An order whose bad date the reason quotes into the message: a
    // newline, a quote, a forged JSON line, ESC and CR; then an order and a
    // different body under its uid (a conflicting duplicate).
    let forged = "\"}\n{\"level\":\"ERROR\",\"message\":\"FORGED\"}\u{1b}[2J\r";
    let mut hostile = order_value(&unique("baddate"));
    hostile["date_created"] = Value::from(forged);
    let hostile = serde_json::to_vec(&hostile).unwrap();
    let rejected = w.publisher.publish(&w.names.subject, None, &hostile);
    let uid = unique("logs");
    let mut order = order_value(&uid);
    w.publisher
        .publish(&w.names.subject, None, &serde_json::to_vec(&order).unwrap());
    wait_until(Duration::from_secs(15), "the order stored", || {
        w.db.order_count() == 1
    });
    order["customer_id"] = Value::from("someone else");
    let conflict =
        w.publisher
            .publish(&w.names.subject, None, &serde_json::to_vec(&order).unwrap());
    wait_until(Duration::from_secs(15), "two dead letters", || {
        w.db.query_i64("SELECT count(*) FROM rejected_messages") == 2
    });
    let sequence_of = |kind: &str| {
        w.db.query_i64(&format!(
            "SELECT stream_sequence FROM rejected_messages WHERE kind = '{kind}'"
        ))
    };
    let (bad_date, conflicting) = (
        sequence_of("bad_date"),
        sequence_of("conflicting_duplicate"),
    );
    assert_eq!(bad_date as u64, rejected.sequence);
    assert_eq!(conflicting as u64, conflict.sequence);
    wait_until(Duration::from_secs(5), "both dead letters logged", || {
        w.service.log().matches("dead-lettered").count() >= 2
    });
    // A clean stop logs too, and must be JSON as well.
    w.service.assert_clean_exit();

    // The harness's log holds stderr and, first, stdout's start-up line
    // (contract C1): that one line aside, every line must be a log object.
    let log = w.service.log();
    let start_up: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("{\"http_addr\":"))
        .collect();
    assert_eq!(start_up.len(), 1, "{log}");
    let log = log.replacen(&format!("{}\n", start_up[0]), "", 1);
    let lines = parse_json_lines(&log);
    let letter = find(&lines, "dead-lettered", "stream_sequence", &bad_date.into())
        .unwrap_or_else(|| panic!("no dead-letter line with stream_sequence {bad_date}:\n{log}"));
    assert_eq!(letter["kind"], "bad_date", "{letter}");
    // The message parses back to exactly the text logged: the reason as
    // stored, with whatever it quotes.
    let reason: String =
        w.db.client()
            .query_one(
                "SELECT reason FROM rejected_messages WHERE kind = 'bad_date'",
                &[],
            )
            .unwrap()
            .get(0);
    assert!(reason.contains("FORGED"), "{reason:?}");
    assert_eq!(
        letter["message"],
        format!("dead-lettered message {bad_date}: {reason}"),
    );
    assert!(!log.contains('\u{1b}') && !log.contains('\r'), "{log}");
    assert_eq!(letter["level"], "INFO", "{letter}");
    assert!(
        letter["target"]
            .as_str()
            .unwrap()
            .starts_with("order_service"),
        "{letter}"
    );
    let line = find(
        &lines,
        "dead-lettered",
        "stream_sequence",
        &conflicting.into(),
    )
    .unwrap_or_else(|| panic!("no conflict line with stream_sequence {conflicting}:\n{log}"));
    assert_eq!(line["order_uid"], uid.as_str(), "{line}");
    assert_eq!(line["kind"], "conflicting_duplicate", "{line}");
    // Every timestamp is RFC 3339 in UTC.
    for line in &lines {
        let timestamp = line["timestamp"].as_str().unwrap();
        assert!(
            timestamp.len() >= 20 && timestamp.as_bytes()[10] == b'T' && timestamp.ends_with('Z'),
            "{line}"
        );
    }
    assert!(
        lines.iter().any(|l| l["message"] == "stopped"),
        "the shutdown was not logged:\n{log}"
    );
}

/// The error that ends the process at start-up is a JSON line too, so a
/// pipeline sees why a pod is crash-looping.
#[test]
fn a_fatal_start_up_error_is_a_json_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_order-service"))
        .env_clear()
        .env("LOG_FORMAT", "json")
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{}/x", free_port()),
        )
        .env("STARTUP_TIMEOUT", "1")
        .env("HTTP_ADDR", "127.0.0.1:0")
        .stdin(Stdio::null())
        .output()
        .expect("run order-service");
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "stdout: {:?}", output.stdout);
    let stderr = String::from_utf8(output.stderr).expect("UTF-8 on stderr");
    let lines = parse_json_lines(&stderr);
    let last = lines.last().unwrap();
    assert_eq!(last["level"], "ERROR", "{stderr}");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("cannot connect to PostgreSQL"),
        "{stderr}"
    );
}

/// Text stays the default, and shows a line's fields after its message.
#[test]
fn text_logs_stay_the_default() {
    let output = Command::new(env!("CARGO_BIN_EXE_order-service"))
        .env_clear()
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{}/x", free_port()),
        )
        .env("STARTUP_TIMEOUT", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run order-service");
    let stderr = String::from_utf8(output.stderr).expect("UTF-8 on stderr");
    assert!(
        stderr
            .lines()
            .next()
            .is_some_and(|l| l.starts_with('[') && l.contains(" WARN ")),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("order-service: cannot connect to PostgreSQL")),
        "{stderr}"
    );
}
