//! `GET /rejections` (contract C3) against the real service over the shared
//! PostgreSQL and NATS: hostile messages published to JetStream are found
//! there with their kind, length and escaped payload; pages walk every dead
//! letter newest first, by kind too; bad parameters get 400.

pub mod common;

use common::*;
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;

/// Every page of `/rejections?{query}` from the newest, walking next_cursor.
fn walk(service: &Service, query: &str, limit: usize) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let mut url = format!("/rejections?limit={limit}{query}");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let (status, body) = service.get_json(&url);
        assert_eq!(status, 200, "{url}: {body}");
        let page = body["rejections"].as_array().expect("rejections array");
        assert!(page.len() <= limit, "{url}: {} rows", page.len());
        rows.extend(page.iter().cloned());
        match &body["next_cursor"] {
            Value::Null => return rows,
            Value::String(next) => {
                assert_eq!(page.len(), limit, "a page before the last is full");
                cursor = Some(next.clone());
            }
            other => panic!("next_cursor {other}"),
        }
    }
    panic!("more than 10,000 pages");
}

#[test]
fn hostile_messages_are_listed_newest_first_with_escaped_payloads() {
    let db = TestDb::create();
    let names = NatsNames::unique();
    let _stream = names.guard(SHARED_NATS);
    let service = Service::start_ready(&ServiceConfig::new(&db, SHARED_NATS, &names));
    let publisher = Publisher::connect(SHARED_NATS);

    let mut long = b"<not json> ".repeat(1000);
    long.extend_from_slice("é".as_bytes());
    let sent: Vec<(&str, Vec<u8>)> = vec![
        ("not_json", br#"<img src=x onerror="alert(1)">"#.to_vec()),
        ("not_utf8", b"<b>\xff\xfe</b>\x00".to_vec()),
        ("not_json", long.clone()),
        ("bad_order_uid", order_with_uid("bad uid with spaces")),
    ];
    let sequences: Vec<u64> = sent
        .iter()
        .map(|(_, body)| publisher.publish(&names.subject, None, body).sequence)
        .collect();

    let mut listed: Vec<Value> = Vec::new();
    wait_until(Duration::from_secs(20), "four dead letters listed", || {
        let (status, body) = service.get_json("/rejections");
        assert_eq!(status, 200, "{body}");
        listed = body["rejections"].as_array().cloned().unwrap_or_default();
        listed.len() == sent.len()
    });
    // Newest first: the reverse of the order published.
    let listed_sequences: Vec<u64> = listed
        .iter()
        .map(|r| r["stream_sequence"].as_u64().expect("a stream sequence"))
        .collect();
    let mut expected = sequences.clone();
    expected.reverse();
    assert_eq!(listed_sequences, expected);

    for ((kind, body), row) in sent.iter().zip(listed.iter().rev()) {
        let fields: HashSet<&str> = row.as_object().unwrap().keys().map(|k| &**k).collect();
        assert_eq!(
            fields,
            HashSet::from([
                "id",
                "received_at",
                "kind",
                "reason",
                "stream_sequence",
                "payload_length",
                "payload",
                "payload_truncated"
            ]),
            "{row}"
        );
        assert_eq!(row["kind"], *kind, "{row}");
        assert!(!row["reason"].as_str().unwrap().is_empty(), "{row}");
        assert_eq!(row["payload_length"], body.len(), "{row}");
        let received = row["received_at"].as_str().unwrap();
        assert!(
            received.len() == 27 && received.ends_with('Z') && received.as_bytes()[10] == b'T',
            "received_at {received}"
        );
        let payload = row["payload"].as_str().unwrap();
        if body.len() > 4096 {
            assert_eq!(row["payload_truncated"], true, "{row}");
            assert_eq!(payload.as_bytes(), &body[..4096]);
        } else {
            assert_eq!(row["payload_truncated"], false, "{row}");
            match std::str::from_utf8(body) {
                Ok(text) => assert_eq!(payload, text),
                Err(_) => assert_eq!(payload, "<b>\\xff\\xfe</b>\u{0}"),
            }
        }
    }

    let (status, body) = service.get_json("/rejections?kind=not_json");
    assert_eq!(status, 200);
    let kinds: Vec<&str> = body["rejections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["not_json", "not_json"]);
    let (status, body) = service.get_json("/rejections?kind=too_deep");
    assert_eq!(
        (status, body["rejections"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    assert_eq!(body["next_cursor"], Value::Null);

    for bad in [
        "/rejections?kind=NOT_JSON",
        "/rejections?limit=0",
        "/rejections?limit=1001",
        "/rejections?cursor=abc",
        "/rejections?since=1",
    ] {
        let (status, body) = service.get_json(bad);
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
}

#[test]
fn pages_walk_every_dead_letter_once_by_kind_too() {
    let db = TestDb::create();
    let names = NatsNames::unique();
    let _stream = names.guard(SHARED_NATS);
    let service = Service::start_ready(&ServiceConfig::new(&db, SHARED_NATS, &names));
    // Written straight to the table the writer fills: paging is about rows,
    // and 1,000 of them through NATS would only slow the test.
    let mut client = db.client();
    client
        .batch_execute(
            "INSERT INTO rejected_messages (kind, reason, stream_sequence, payload_length, payload)
             SELECT CASE WHEN i % 3 = 0 THEN 'too_deep' ELSE 'not_json' END, 'test row ' || i,
                    CASE WHEN i % 7 = 0 THEN NULL ELSE i END, 3, 'abc'
             FROM generate_series(1, 1000) AS i",
        )
        .expect("insert dead letters");

    let all = walk(&service, "", 97);
    assert_eq!(all.len(), 1000);
    let ids: Vec<i64> = all.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "newest first, no repeats"
    );
    assert!(all.iter().any(|r| r["stream_sequence"].is_null()));

    let deep = walk(&service, "&kind=too_deep", 100);
    assert_eq!(deep.len(), 333);
    assert!(deep.iter().all(|r| r["kind"] == "too_deep"));
    let deep_ids: Vec<i64> = deep.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert!(deep_ids.windows(2).all(|w| w[0] > w[1]));

    let (status, body) = service.get_json("/rejections?limit=1000");
    assert_eq!(status, 200);
    assert_eq!(body["rejections"].as_array().unwrap().len(), 1000);
    assert_eq!(body["next_cursor"], Value::Null);
    // A cursor from before the first id: an empty last page.
    let (status, body) = service.get_json("/rejections?cursor=-5");
    assert_eq!(
        (status, body["rejections"].as_array().map(Vec::len)),
        (200, Some(0))
    );
}
