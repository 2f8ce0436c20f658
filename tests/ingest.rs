//! User story: "an order published on the stream is stored once and served
//! as published; anything else lands in the dead letters with a reason".
//! Real PostgreSQL and NATS; one fresh database and stream per test.

pub mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn wait_served(service: &Service, uid: &str) {
    wait_until(
        Duration::from_secs(15),
        &format!("GET /orders/{uid} answers 200"),
        || service.order_status(uid) == 200,
    );
}

#[test]
fn published_order_is_served_json_equal_with_unknown_fields_kept() {
    let w = World::start(&[]);
    let uid = unique("canon");
    let mut order = order_value(&uid);
    // Fields the model does not know must survive the round trip.
    order["gift_wrap"] = json!({"colour": "red", "layers": [1, 2, {"deep": null}]});
    order["delivery"]["floor"] = json!(3);
    let body = serde_json::to_vec(&order).unwrap();
    w.publisher.publish(&w.names.subject, Some(&uid), &body);

    wait_served(&w.service, &uid);
    let resp = w.service.get_full(&format!("/orders/{uid}"));
    assert_eq!(resp.status, 200);
    assert!(
        resp.header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "content-type: {:?}",
        resp.header("content-type")
    );
    assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        resp.json(),
        order,
        "served order differs from the published one"
    );

    // The database holds it once, as jsonb equal to what was published.
    let mut client = w.db.client();
    let row = client
        .query_one(
            "SELECT count(*), min(data::text) FROM orders WHERE order_uid = $1",
            &[&uid],
        )
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    let stored: Value = serde_json::from_str(row.get::<_, &str>(1)).unwrap();
    assert_eq!(stored, order);

    // Unknown id: 404 with a JSON error naming the id.
    let missing = unique("missing");
    let resp = w.service.get_full(&format!("/orders/{missing}"));
    assert_eq!(resp.status, 404, "{}", resp.text());
    assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
    let error = resp.json();
    assert_eq!(error["error"], "order not found", "{error}");
    assert_eq!(error["order_uid"], missing.as_str(), "{error}");

    // Malformed ids: 400 with a JSON error.
    let too_long = "a".repeat(65);
    for bad in ["bad.uid", "bad%20uid", "%27%3B--", too_long.as_str()] {
        let resp = w.service.get_full(&format!("/orders/{bad}"));
        assert_eq!(resp.status, 400, "GET /orders/{bad}: {}", resp.text());
        let error = resp.json();
        assert!(
            error["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("malformed order_uid")),
            "GET /orders/{bad}: {error}"
        );
        assert!(
            error.get("order_uid").is_some(),
            "GET /orders/{bad}: {error}"
        );
    }
    // The longest valid id is not malformed, just unknown.
    let longest = "b".repeat(64);
    assert_eq!(w.service.order_status(&longest), 404);
}

#[test]
fn duplicates_are_stored_once_and_conflicts_are_dead_lettered() {
    let w = World::start(&[]);
    let uid = unique("dup");
    let body = order_with_uid(&uid);

    // Same Nats-Msg-Id twice: the stream drops the second copy.
    let first = w.publisher.publish(&w.names.subject, Some(&uid), &body);
    let second = w.publisher.publish(&w.names.subject, Some(&uid), &body);
    assert!(!first.duplicate);
    assert!(second.duplicate, "the stream did not dedup by Nats-Msg-Id");
    // Another Nats-Msg-Id: the stream keeps it, the service must absorb it.
    let third = w
        .publisher
        .publish(&w.names.subject, Some(&format!("{uid}-again")), &body);
    assert!(!third.duplicate);
    // The same order with its keys in another order and other whitespace is
    // the same order.
    let reordered = {
        let value: Value = serde_json::from_slice(&body).unwrap();
        let mut pairs: Vec<(String, Value)> =
            value.as_object().unwrap().clone().into_iter().collect();
        pairs.reverse();
        let mut text = String::from("{ ");
        for (i, (k, v)) in pairs.iter().enumerate() {
            if i > 0 {
                text.push_str(",\n  ");
            }
            text.push_str(&format!("{}: {}", json!(k), v));
        }
        text.push_str(" }");
        text.into_bytes()
    };
    w.publisher.publish(
        &w.names.subject,
        Some(&format!("{uid}-reordered")),
        &reordered,
    );

    wait_consumer_drained(SHARED_NATS, &w.names, Duration::from_secs(20));
    wait_served(&w.service, &uid);
    assert_eq!(w.db.query_i64("SELECT count(*) FROM orders"), 1);
    assert_eq!(
        w.db.query_i64("SELECT count(*) FROM rejected_messages"),
        0,
        "an identical republish must not be a dead letter"
    );

    // A different body under a known order_uid is not applied.
    let mut conflicting: Value = serde_json::from_slice(&body).unwrap();
    conflicting["payment"]["amount"] = json!(999_999);
    w.publisher.publish(
        &w.names.subject,
        Some(&format!("{uid}-conflict")),
        &serde_json::to_vec(&conflicting).unwrap(),
    );
    wait_until(
        Duration::from_secs(15),
        "a conflicting_duplicate dead letter",
        || {
            w.db.try_query_i64(
                "SELECT count(*) FROM rejected_messages WHERE kind = 'conflicting_duplicate'",
            )
            .unwrap_or(0)
                >= 1
        },
    );
    wait_consumer_drained(SHARED_NATS, &w.names, Duration::from_secs(20));
    assert_eq!(w.db.query_i64("SELECT count(*) FROM orders"), 1);
    assert_eq!(
        w.db.query_i64("SELECT count(*) FROM rejected_messages"),
        1,
        "exactly one dead letter: the conflicting body"
    );
    let mut client = w.db.client();
    let row = client
        .query_one("SELECT reason FROM rejected_messages", &[])
        .unwrap();
    let reason: String = row.get(0);
    assert!(
        reason.contains(&uid),
        "the reason names the order_uid: {reason}"
    );
    let (status, served) = w.service.get_json(&format!("/orders/{uid}"));
    assert_eq!(status, 200);
    assert_eq!(
        served["payment"]["amount"],
        json!(1817),
        "the first body stays"
    );
    assert_eq!(
        w.service.metric(
            "order_service_rejected_total",
            &[("kind", "conflicting_duplicate")]
        ),
        Some(1.0)
    );
    let duplicates = w
        .service
        .metric("order_service_duplicates_total", &[])
        .expect("order_service_duplicates_total");
    assert!(duplicates >= 2.0, "duplicates_total = {duplicates}");
}

/// One bad message: what is published and what the dead letter must say.
struct BadCase {
    kind: &'static str,
    payload: Vec<u8>,
    /// The reason must contain this (the path, usually).
    reason_contains: &'static str,
}

fn with(uid: &str, change: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut order = order_value(uid);
    change(&mut order);
    serde_json::to_vec(&order).unwrap()
}

fn bad_cases(tag: &str, max_bytes: usize) -> Vec<BadCase> {
    let uid = |n: &str| format!("{tag}_{n}");
    let mut deep = Value::from(1);
    for _ in 0..100 {
        deep = Value::Array(vec![deep]);
    }
    vec![
        BadCase {
            kind: "not_utf8",
            payload: {
                let mut bytes = order_with_uid(&uid("utf8"));
                bytes.insert(20, 0xff);
                bytes
            },
            reason_contains: "",
        },
        BadCase {
            kind: "not_json",
            payload: b"{\"order_uid\": \"x\", ".to_vec(),
            reason_contains: "",
        },
        BadCase {
            kind: "not_object",
            payload: b"[1, 2, 3]".to_vec(),
            reason_contains: "",
        },
        BadCase {
            kind: "missing_field",
            payload: with(&uid("missing"), |o| {
                o["delivery"].as_object_mut().unwrap().remove("email");
            }),
            reason_contains: "delivery.email",
        },
        BadCase {
            kind: "wrong_type",
            payload: with(&uid("wrongtype"), |o| {
                let item = o["items"][0].clone();
                o["items"] = json!([item.clone(), item.clone(), item]);
                o["items"][2]["price"] = json!("453");
            }),
            reason_contains: "items[2].price",
        },
        BadCase {
            kind: "wrong_type",
            payload: with(&uid("fraction"), |o| o["payment"]["amount"] = json!(18.5)),
            reason_contains: "payment.amount",
        },
        BadCase {
            kind: "negative_amount",
            payload: with(&uid("negamount"), |o| o["payment"]["amount"] = json!(-5)),
            reason_contains: "payment.amount",
        },
        BadCase {
            kind: "negative_amount",
            payload: with(&uid("negprice"), |o| o["items"][0]["price"] = json!(-1)),
            reason_contains: "items[0].price",
        },
        BadCase {
            kind: "sale_out_of_range",
            payload: with(&uid("sale"), |o| o["items"][0]["sale"] = json!(101)),
            reason_contains: "items[0].sale",
        },
        BadCase {
            kind: "empty_items",
            payload: with(&uid("empty"), |o| o["items"] = json!([])),
            reason_contains: "items",
        },
        BadCase {
            kind: "bad_order_uid",
            payload: with("bad uid!", |_| {}),
            reason_contains: "order_uid",
        },
        BadCase {
            kind: "bad_order_uid",
            payload: with("", |_| {}),
            reason_contains: "order_uid",
        },
        BadCase {
            kind: "bad_order_uid",
            payload: with(&"u".repeat(65), |_| {}),
            reason_contains: "order_uid",
        },
        BadCase {
            kind: "bad_date",
            payload: with(&uid("date"), |o| {
                o["date_created"] = json!("26.11.2021 06:22")
            }),
            reason_contains: "date_created",
        },
        BadCase {
            kind: "too_large",
            payload: with(&uid("large"), |o| {
                o["padding"] = json!("x".repeat(max_bytes + 1))
            }),
            reason_contains: "",
        },
        BadCase {
            kind: "too_deep",
            payload: with(&uid("deep"), |o| o["nested"] = deep),
            reason_contains: "",
        },
        BadCase {
            kind: "nul_character",
            payload: with(&uid("nul"), |o| {
                o["delivery"]["name"] = json!("Test\u{0}Testov")
            }),
            reason_contains: "delivery.name",
        },
    ]
}

#[test]
fn every_kind_of_bad_input_is_dead_lettered_with_its_reason() {
    const MAX_BYTES: usize = 16 * 1024;
    let w = World::start(&[("MAX_MESSAGE_BYTES", &MAX_BYTES.to_string())]);
    let tag = unique("bad");
    let cases = bad_cases(&tag, MAX_BYTES);
    // A valid order over 8000 bytes, under the limit, to show the limit is
    // the configured one and not something smaller.
    let big_uid = format!("{tag}_big");
    let big = big_order(&big_uid, 9_000);
    assert!(big.len() < MAX_BYTES);

    for (i, case) in cases.iter().enumerate() {
        w.publisher
            .publish(&w.names.subject, Some(&format!("{tag}-{i}")), &case.payload);
    }
    w.publisher.publish(&w.names.subject, Some(&big_uid), &big);

    wait_until(
        Duration::from_secs(20),
        &format!("{} dead letters", cases.len()),
        || {
            w.db.try_query_i64("SELECT count(*) FROM rejected_messages")
                .unwrap_or(0)
                >= cases.len() as i64
        },
    );
    wait_consumer_drained(SHARED_NATS, &w.names, Duration::from_secs(20));

    let mut client = w.db.client();
    let rows = client
        .query(
            "SELECT kind, reason, payload_length, length(payload), stream_sequence FROM rejected_messages ORDER BY stream_sequence",
            &[],
        )
        .unwrap();
    let listing: Vec<String> = rows
        .iter()
        .map(|r| format!("{}: {}", r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    assert_eq!(
        rows.len(),
        cases.len(),
        "one dead letter per bad message, got:\n{}",
        listing.join("\n")
    );
    for (case, row) in cases.iter().zip(&rows) {
        let kind: String = row.get(0);
        let reason: String = row.get(1);
        let payload_length: i32 = row.get(2);
        let stored_length: i32 = row.get(3);
        let sequence: Option<i64> = row.get(4);
        assert_eq!(
            kind,
            case.kind,
            "dead letters in stream order:\n{}",
            listing.join("\n")
        );
        assert!(
            reason.contains(case.reason_contains),
            "{kind}: reason {reason:?} does not name {:?}",
            case.reason_contains
        );
        assert_eq!(
            payload_length as usize,
            case.payload.len(),
            "{kind}: payload_length"
        );
        assert_eq!(
            stored_length as usize,
            case.payload.len().min(64 * 1024),
            "{kind}: stored payload"
        );
        assert!(sequence.is_some(), "{kind}: stream_sequence is recorded");
    }
    // The raw bytes are kept as published, not re-encoded.
    let not_utf8: Vec<u8> = client
        .query_one(
            "SELECT payload FROM rejected_messages WHERE kind = 'not_utf8'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(not_utf8, cases[0].payload);

    // No bad message became an order; the good big one did.
    assert_eq!(w.db.query_i64("SELECT count(*) FROM orders"), 1);
    wait_served(&w.service, &big_uid);

    // Every kind is counted in /metrics.
    let metrics = w.service.metrics();
    let mut expected: std::collections::BTreeMap<&str, f64> = Default::default();
    for case in &cases {
        *expected.entry(case.kind).or_default() += 1.0;
    }
    for (kind, count) in expected {
        assert_eq!(
            metric_value(&metrics, "order_service_rejected_total", &[("kind", kind)]),
            Some(count),
            "order_service_rejected_total{{kind=\"{kind}\"}} in:\n{metrics}"
        );
    }

    // Still serving and still ingesting.
    let (status, _) = w.service.get("/healthz");
    assert_eq!(status, 200);
    let after = format!("{tag}_after");
    w.publisher
        .publish(&w.names.subject, Some(&after), &order_with_uid(&after));
    wait_served(&w.service, &after);
    assert_eq!(w.service.get("/readyz").0, 200);
}

#[test]
fn message_counters_add_up() {
    let w = World::start(&[]);
    let orders = many_orders("count", 50);
    w.publisher.publish_many(&w.names.subject, &orders);
    w.publisher
        .publish(&w.names.subject, Some("not-json-1"), b"not json");
    wait_consumer_drained(SHARED_NATS, &w.names, Duration::from_secs(20));
    wait_until(Duration::from_secs(10), "the cache holds 50 orders", || {
        w.service.metric("order_service_cache_orders", &[]) == Some(50.0)
    });
    let metrics = w.service.metrics();
    let get = |name: &str, labels: &[(&str, &str)]| {
        metric_value(&metrics, name, labels).unwrap_or_else(|| panic!("{name} in:\n{metrics}"))
    };
    assert_eq!(get("order_service_messages_received_total", &[]), 51.0);
    assert_eq!(get("order_service_orders_stored_total", &[]), 50.0);
    assert_eq!(
        get("order_service_rejected_total", &[("kind", "not_json")]),
        1.0
    );
    assert!(get("order_service_cache_bytes", &[]) > 50.0 * 500.0);
}

/// A message on its last allowed delivery (the 100th) is handled like any
/// other, not dropped by JetStream after `max_deliver`: a valid order is
/// stored, an invalid message dead-lettered with its own kind. (Until issue
/// 14 both were dead-lettered as `redelivery_limit`, losing a valid order.)
#[test]
#[allow(deprecated)] // the nats crate's sync API, as the service uses it
fn on_its_last_delivery_a_valid_order_is_stored_and_an_invalid_one_dead_lettered() {
    use nats::jetstream::{AckKind, PullSubscribeOptions};
    let setup = Setup::shared();
    // The service creates the stream and its durable consumer, then stops.
    setup.start_ready().terminate();
    let uid = unique("last-delivery");
    let publisher = setup.publisher();
    publisher.publish(&setup.names.subject, Some(&uid), &order_with_uid(&uid));
    publisher.publish(&setup.names.subject, None, b"not json");

    // Another client of the same consumer takes both 99 times and gives
    // them back.
    let js = jetstream(&setup.nats_url);
    let options = PullSubscribeOptions::new()
        .bind_stream(setup.names.stream.clone())
        .durable_name(setup.names.consumer.clone());
    let taker = js
        .pull_subscribe_with_options(&setup.names.subject, &options)
        .expect("bind to the service's consumer");
    let mut delivered = std::collections::HashMap::new();
    while delivered.len() < 2 || delivered.values().any(|&d| d < 99) {
        let batch = taker
            .timeout_fetch(2, Duration::from_secs(5))
            .expect("pull request");
        for message in batch.map_while(Result::ok) {
            let info = message
                .jetstream_message_info()
                .expect("a JetStream message");
            delivered.insert(info.stream_seq, info.delivered);
            message.ack_kind(AckKind::Nak).expect("nak");
        }
    }
    drop(taker);

    let service = setup.start_ready();
    wait_until(
        Duration::from_secs(30),
        "the order and the dead letter",
        || {
            service.order_status(&uid) == 200
                && setup.db.query_i64("SELECT count(*) FROM rejected_messages") == 1
        },
    );
    let kind: String = setup
        .db
        .client()
        .query_one("SELECT kind FROM rejected_messages", &[])
        .unwrap()
        .get(0);
    assert_eq!(kind, "not_json");
    assert_eq!(setup.db.order_count(), 1);
    let state = consumer_info(&setup.nats_url, &setup.names).expect("consumer");
    assert_eq!(
        state.num_ack_pending, 0,
        "acked and terminated, not left pending"
    );
}

/// A dead letter PostgreSQL refuses does not vanish (issue 14): it is kept
/// without its payload, with kind, reason and stream sequence, and counted.
/// Before, the message was terminated with no row at all.
#[test]
fn a_dead_letter_postgresql_refuses_is_kept_without_its_payload() {
    let setup = Setup::shared();
    let service = setup.start_ready();
    setup
        .db
        .client()
        .batch_execute(
            "CREATE FUNCTION refuse_payloads() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF length(NEW.payload) > 0 THEN
                     RAISE EXCEPTION 'no payloads today' USING ERRCODE = '23514';
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_payloads BEFORE INSERT ON rejected_messages
                 FOR EACH ROW EXECUTE FUNCTION refuse_payloads();",
        )
        .unwrap();
    let published = setup
        .publisher()
        .publish(&setup.names.subject, None, b"not json at all");

    wait_until(Duration::from_secs(20), "the reduced dead letter", || {
        setup.db.query_i64("SELECT count(*) FROM rejected_messages") == 1
    });
    let row = setup
        .db
        .client()
        .query_one(
            "SELECT kind, reason, stream_sequence, length(payload) FROM rejected_messages",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "not_json");
    let reason: String = row.get(1);
    assert!(
        reason.contains("no payloads today") && reason.contains("15 bytes are not kept"),
        "{reason}"
    );
    assert_eq!(
        row.get::<_, Option<i64>>(2),
        Some(published.sequence as i64)
    );
    assert_eq!(row.get::<_, i32>(3), 0);
    wait_until(Duration::from_secs(10), "counted", || {
        service.metric("order_service_rejected_total", &[("kind", "not_json")]) == Some(1.0)
    });
    let state = consumer_info(&setup.nats_url, &setup.names).expect("consumer");
    assert_eq!(state.num_ack_pending, 0, "terminated, not left pending");
}
