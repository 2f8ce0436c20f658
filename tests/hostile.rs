//! User story: "anything can be published and anyone can connect; the
//! service keeps storing what is valid and answering everyone else".
//! Real PostgreSQL and NATS; one fresh database and stream per test.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn address(service: &Service) -> String {
    service.base_url.trim_start_matches("http://").to_owned()
}

/// Sends raw bytes and returns what comes back within `wait`.
fn raw_exchange(service: &Service, request: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(address(service)).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    let _ = stream.write_all(request);
    // Read until the server closes or goes quiet for `wait`.
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n @ 1..) = stream.read(&mut chunk) {
        answer.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn a_body_claiming_100_terabytes_gets_413_and_the_service_lives_on() {
    let w = World::start(&[]);
    let answer = raw_exchange(
        &w.service,
        b"POST /orders/x HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000000000\r\n\r\nabc",
        Duration::from_secs(5),
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(
        answer.contains("request bodies are not accepted"),
        "{answer:?}"
    );
    // tiny_http 0.12 would have aborted the process draining that body.
    assert_eq!(w.service.get_json("/healthz").0, 200);
    assert_eq!(
        w.service
            .metric("order_service_http_bodies_refused_total", &[]),
        Some(1.0)
    );
}

#[test]
fn malformed_and_oversized_requests_leave_other_clients_served() {
    let w = World::start(&[]);
    let malformed = raw_exchange(&w.service, b"NONSENSE\r\n\r\n", Duration::from_secs(5));
    assert!(malformed.starts_with("HTTP/1.1 400"), "{malformed:?}");
    // A 1 MB request line and a 1 MB header: answered or dropped, never fatal.
    let long_path = format!(
        "GET /orders/{} HTTP/1.1\r\nHost: t\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let answer = raw_exchange(&w.service, long_path.as_bytes(), Duration::from_secs(5));
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer:?}"
    );
    let long_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "b".repeat(1 << 20)
    );
    let answer = raw_exchange(&w.service, long_header.as_bytes(), Duration::from_secs(5));
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 "),
        "{answer:?}"
    );
    assert_eq!(w.service.get_json("/healthz").0, 200);
}

#[test]
fn idle_and_slow_clients_do_not_hold_the_workers() {
    let w = World::start(&[]);
    let uid = unique("busy");
    w.publisher
        .publish(&w.names.subject, Some(&uid), &order_with_uid(&uid));
    wait_until(Duration::from_secs(15), "the order is served", || {
        w.service.order_status(&uid) == 200
    });
    // 300 connections that never send anything, and 30 that send a request
    // one byte at a time, every 100 ms.
    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(address(&w.service)).unwrap())
        .collect();
    let slow: Vec<TcpStream> = (0..30)
        .map(|_| TcpStream::connect(address(&w.service)).unwrap())
        .collect();
    let dribbler = std::thread::spawn(move || {
        let request = b"GET /healthz HTTP/1.1\r\nHost: slow\r\n";
        for byte in request.iter().take(20) {
            for mut stream in &slow {
                let _ = stream.write_all(&[*byte]);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        slow
    });
    let mut latencies = Vec::new();
    for _ in 0..500 {
        let started = Instant::now();
        assert_eq!(w.service.order_status(&uid), 200);
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    assert!(
        p99 < Duration::from_millis(50),
        "p99 {p99:?} with idle and slow clients open"
    );
    drop(dribbler.join().unwrap());
    drop(idle);
    assert_eq!(w.service.get_json("/healthz").0, 200);
}

#[test]
fn a_row_postgresql_refuses_is_dead_lettered_and_its_batch_neighbours_stored() {
    let w = World::start(&[]);
    // A constraint the service knows nothing about makes PostgreSQL refuse one
    // valid order (SQLSTATE 23514): not transient, so retrying cannot help.
    let poison = unique("poison");
    w.db.client()
        .batch_execute(&format!(
            "ALTER TABLE orders ADD CONSTRAINT no_poison CHECK (order_uid <> '{poison}')"
        ))
        .unwrap();
    let mut batch: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| {
            let uid = format!("{poison}n{i}");
            let body = order_with_uid(&uid);
            (uid, body)
        })
        .collect();
    batch.insert(17, (poison.clone(), order_with_uid(&poison)));
    w.publisher.publish_many(&w.names.subject, &batch);

    wait_until(Duration::from_secs(20), "40 neighbours stored", || {
        w.db.order_count() == 40
    });
    wait_until(
        Duration::from_secs(20),
        "the poison message dead-lettered",
        || {
            w.db.query_i64(
                "SELECT count(*) FROM rejected_messages WHERE kind = 'database_rejected'",
            ) == 1
        },
    );
    let reason: String =
        w.db.client()
            .query_one("SELECT reason FROM rejected_messages", &[])
            .unwrap()
            .get(0);
    assert!(reason.contains("no_poison"), "{reason}");
    assert_eq!(w.service.order_status(&poison), 404);
    assert_eq!(w.service.order_status(&format!("{poison}n39")), 200);
}

#[test]
fn hostile_strings_are_stored_and_served_verbatim() {
    let w = World::start(&[]);
    let uid = unique("inject");
    let mut order = order_value(&uid);
    let strings = [
        "Robert'); DROP TABLE orders; --",
        "100% \"quoted\" \\ back\\slash",
        "\u{202e}rtl override\u{200f}",
        "emoji 😀 and 𝄞 (four-byte UTF-8)",
        "line\nbreak\tand \u{1b}[31mescape",
    ];
    order["delivery"]["name"] = json!(strings[0]);
    order["delivery"]["address"] = json!(strings[1]);
    order["delivery"]["city"] = json!(strings[2]);
    order["items"][0]["name"] = json!(strings[3]);
    order["items"][0]["brand"] = json!(strings[4]);
    let body = serde_json::to_vec(&order).unwrap();
    w.publisher.publish(&w.names.subject, Some(&uid), &body);
    wait_until(Duration::from_secs(15), "the order is served", || {
        w.service.order_status(&uid) == 200
    });
    let served = w.service.get_full(&format!("/orders/{uid}"));
    assert_eq!(
        served.body, body,
        "served bytes differ from the published ones"
    );
    let (_, value): (u16, Value) = w.service.get_json(&format!("/orders/{uid}"));
    assert_eq!(value, order);
    assert_eq!(w.db.query_i64("SELECT count(*) FROM orders"), 1);

    // A rejection whose reason carries a newline and ESC is logged escaped.
    let mut bad = order_value(&unique("badlog"));
    bad["date_created"] = json!("line\nbreak \u{1b}[2J");
    w.publisher
        .publish(&w.names.subject, None, &serde_json::to_vec(&bad).unwrap());
    wait_until(
        Duration::from_secs(15),
        "the bad order dead-lettered",
        || w.db.query_i64("SELECT count(*) FROM rejected_messages") == 1,
    );
    wait_until(Duration::from_secs(5), "the rejection is logged", || {
        w.service
            .log_tail()
            .contains("date_created: not an RFC 3339")
    });
    let log = w.service.log_tail();
    assert!(!log.contains('\u{1b}'), "raw ESC in the log");
    assert!(
        log.contains("\\u{1b}"),
        "the ESC is not shown escaped: {log}"
    );
}
