//! User story: "the tools work against the real service". `pusher` publishes
//! generated orders and every kind of hostile message to a running service,
//! which stores the orders and records each rejection under the kind the
//! pusher named; `loadtest` then reads the orders back without an error.
//! The binaries are the workspace's (`make test` builds them first).

pub mod common;

use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A sibling binary of `order-service` in the same target directory.
fn tool(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_order-service")).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`; make test does)",
        path.display()
    );
    path
}

/// Runs a tool with `--json` and returns its JSON report.
fn run_json(mut command: Command) -> Value {
    let output = command.arg("--json").output().expect("run the tool");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {stdout}\n{stderr}",
        output.status
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"))
}

/// `pusher --invalid-kind` names: the service's rejection kinds that a
/// message alone can cause.
const PUSHER_KINDS: [&str; 14] = [
    "not_utf8",
    "not_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "negative_amount",
    "sale_out_of_range",
    "empty_items",
    "bad_order_uid",
    "bad_date",
    "too_large",
    "too_deep",
    "nul_character",
    "conflicting_duplicate",
];

fn pusher(names: &NatsNames, args: &[&str]) -> Value {
    let mut command = Command::new(tool("pusher"));
    command
        .env("NATS_URL", SHARED_NATS)
        .env("NATS_STREAM", &names.stream)
        .env("NATS_SUBJECT", &names.subject)
        .env("MAX_MESSAGE_BYTES", "65536")
        .args(args)
        .args(["--drain-timeout", "30s"]);
    run_json(command)
}

#[test]
fn pusher_orders_and_every_rejection_kind_reach_the_service() {
    let db = TestDb::create();
    let names = NatsNames::unique();
    let _stream = names.guard(SHARED_NATS);
    // A limit under NATS's max_payload, so that too_large can be sent too.
    let service = Service::start_ready(
        &ServiceConfig::new(&db, SHARED_NATS, &names).env("MAX_MESSAGE_BYTES", "65536"),
    );

    let orders = pusher(&names, &["--count", "500", "--seed", "21"]);
    assert_eq!(orders["confirmed"], 500, "{orders}");
    assert_eq!(orders["failed"], 0, "{orders}");
    wait_until(Duration::from_secs(30), "500 orders cached", || {
        service.metric("order_service_cache_orders", &[]) == Some(500.0)
    });
    assert_eq!(db.order_count(), 500);

    let hostile = pusher(
        &names,
        &["--count", "400", "--invalid", "0.5", "--seed", "22"],
    );
    assert_eq!(hostile["confirmed"], 400, "{hostile}");
    let invalid = hostile["invalid"].as_u64().unwrap();
    let valid = 400 - invalid;
    wait_until(Duration::from_secs(30), "900 messages received", || {
        service.metric("order_service_messages_received_total", &[]) == Some(900.0)
    });
    wait_until(Duration::from_secs(30), "the valid ones cached", || {
        service.metric("order_service_cache_orders", &[]) == Some((500 + valid) as f64)
    });
    assert_eq!(db.order_count(), (500 + valid) as i64);

    // Every kind the pusher can make was recorded under its own name.
    let mut rejected = 0;
    for kind in PUSHER_KINDS {
        let n = service
            .metric("order_service_rejected_total", &[("kind", kind)])
            .unwrap_or(0.0);
        assert!(n >= 1.0, "no {kind} rejection recorded");
        rejected += n as u64;
    }
    assert_eq!(rejected, invalid, "{hostile}");
    let kinds = PUSHER_KINDS.map(|k| format!("'{k}'")).join(", ");
    let dead_letters = db.query_i64(&format!(
        "SELECT count(*) FROM rejected_messages WHERE kind IN ({kinds})"
    ));
    assert_eq!(dead_letters as u64, invalid);
}

#[test]
fn loadtest_reads_orders_back_without_errors() {
    let db = TestDb::create();
    let names = NatsNames::unique();
    let _stream = names.guard(SHARED_NATS);
    let service = Service::start_ready(&ServiceConfig::new(&db, SHARED_NATS, &names));
    let orders = pusher(&names, &["--count", "300", "--seed", "23"]);
    assert_eq!(orders["confirmed"], 300, "{orders}");
    wait_until(Duration::from_secs(30), "300 orders cached", || {
        service.metric("order_service_cache_orders", &[]) == Some(300.0)
    });

    let mut command = Command::new(tool("loadtest"));
    command.args([
        "--url",
        &service.base_url,
        "--requests",
        "2000",
        "--connections",
        "4",
        "--unknown",
        "0.1",
    ]);
    let report = run_json(command);
    assert_eq!(report["requests"], 2000, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["unexpected"], 0, "{report}");
    assert_eq!(report["known_ids"], 300, "{report}");
    assert!(
        report["requests_per_second"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(report["status"]["200"].as_u64().unwrap() > 0, "{report}");
    assert!(report["status"]["404"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["latency_ms"]["p99"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}
