//! User story: "several replicas share one database and one durable
//! consumer: every message is stored once, and every replica's cache holds
//! every stored order, byte for byte the same" — including rows whose
//! transaction commits out of id order, orders over NOTIFY's 8000-byte
//! payload limit, and writes made while a replica's LISTEN connection is
//! down.

pub mod common;

use common::*;
use std::time::Duration;

/// Two services on one database and one set of names.
struct Pair {
    a: Service,
    b: Service,
    publisher: Publisher,
    s: Setup,
}

fn pair() -> Pair {
    let s = Setup::shared();
    // Started together: migrations and stream creation must not race.
    let [a, b]: [Service; 2] = s
        .replicas(2)
        .try_into()
        .unwrap_or_else(|_| unreachable!("two replicas"));
    Pair {
        a,
        b,
        publisher: s.publisher(),
        s,
    }
}

/// Waits until `service` answers 200 for every uid.
fn wait_all_served(service: &Service, who: &str, uids: &[&str], timeout: Duration) {
    let mut missing: Vec<&str> = uids.to_vec();
    wait_until(
        timeout,
        &format!("{who} serves all {} orders", uids.len()),
        || {
            missing.retain(|uid| service.order_status(uid) != 200);
            missing.is_empty()
        },
    );
}

fn assert_identical(p: &Pair, uid: &str) {
    let a = p.a.get_full(&format!("/orders/{uid}"));
    let b = p.b.get_full(&format!("/orders/{uid}"));
    assert_eq!(a.status, 200, "A {uid}: {}", a.text());
    assert_eq!(b.status, 200, "B {uid}: {}", b.text());
    assert!(
        a.body == b.body,
        "bodies of {uid} differ:\nA {}\nB {}",
        a.text(),
        b.text()
    );
}

/// Ends the LISTEN connections of every service on `db`; returns how many.
fn terminate_listeners(client: &mut impl postgres::GenericClient, db: &TestDb) -> i64 {
    let rows = client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid() \
               AND (application_name = 'order-service-listener' OR query ILIKE 'LISTEN%')",
            &[&db.name],
        )
        .expect("pg_terminate_backend");
    rows.iter().filter(|r| r.get::<_, bool>(0)).count() as i64
}

#[test]
fn two_replicas_store_each_message_once_and_both_caches_hold_everything() {
    const N: usize = 1000;
    let p = pair();
    let orders = many_orders("pair", N);
    p.publisher.publish_many(&p.s.names.subject, &orders);

    p.s.wait_drained(Duration::from_secs(30));
    assert_eq!(p.s.db.query_i64("SELECT count(*) FROM orders"), N as i64);
    assert_eq!(
        p.s.db.query_i64("SELECT count(*) FROM rejected_messages"),
        0
    );
    for service in [&p.a, &p.b] {
        wait_all_cached(&[service], N as u64, Duration::from_secs(15));
    }
    // Each message was stored by exactly one replica.
    let (stored_a, stored_b) = (p.a.stored_total(), p.b.stored_total());
    assert_eq!(
        stored_a + stored_b,
        N as u64,
        "A stored {stored_a}, B {stored_b}"
    );
    for (uid, _) in &orders {
        assert_identical(&p, uid);
    }
}

#[test]
fn a_row_committed_out_of_id_order_reaches_both_caches() {
    let p = pair();
    let late = unique("late");
    let late_body = String::from_utf8(order_with_uid(&late)).unwrap();

    // Take an id now and commit it only after later ids are committed.
    let mut client = p.s.db.client();
    let mut tx = client.transaction().unwrap();
    tx.execute(
        "INSERT INTO orders(order_uid, data) VALUES ($1, $2::text::jsonb)",
        &[&late, &late_body],
    )
    .unwrap();

    let orders = many_orders("early", 50);
    p.publisher.publish_many(&p.s.names.subject, &orders);
    let uids: Vec<&str> = orders.iter().map(|(u, _)| u.as_str()).collect();
    wait_all_served(&p.a, "A", &uids, Duration::from_secs(20));
    wait_all_served(&p.b, "B", &uids, Duration::from_secs(20));
    assert_eq!(p.a.order_status(&late), 404);
    let ids_after = p.s.db.query_i64("SELECT min(id) FROM orders");
    tx.commit().unwrap();
    let late_id: i64 = client
        .query_one("SELECT id FROM orders WHERE order_uid = $1", &[&late])
        .unwrap()
        .get(0);
    assert!(late_id < ids_after, "the late row has the smaller id");

    wait_all_served(&p.a, "A", &[&late], Duration::from_secs(10));
    wait_all_served(&p.b, "B", &[&late], Duration::from_secs(10));
    assert_identical(&p, &late);
    let published: serde_json::Value = serde_json::from_str(&late_body).unwrap();
    assert_eq!(p.a.get_json(&format!("/orders/{late}")).1, published);
}

#[test]
fn an_order_over_8000_bytes_is_stored_and_reaches_the_other_replica() {
    let p = pair();
    let uid = unique("big");
    let body = big_order(&uid, 20_000);
    assert!(body.len() > 20_000);
    p.publisher.publish(&p.s.names.subject, Some(&uid), &body);
    wait_all_served(&p.a, "A", &[&uid], Duration::from_secs(15));
    wait_all_served(&p.b, "B", &[&uid], Duration::from_secs(15));
    assert_identical(&p, &uid);
    let published: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(p.b.get_json(&format!("/orders/{uid}")).1, published);

    // A batch of them, too: one statement's NOTIFY must not carry the rows.
    let bigs: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| {
            let uid = format!("{uid}_{i}");
            let body = big_order(&uid, 10_000);
            (uid, body)
        })
        .collect();
    p.publisher.publish_many(&p.s.names.subject, &bigs);
    let uids: Vec<&str> = bigs.iter().map(|(u, _)| u.as_str()).collect();
    wait_all_served(&p.a, "A", &uids, Duration::from_secs(20));
    wait_all_served(&p.b, "B", &uids, Duration::from_secs(20));
    for uid in uids {
        assert_identical(&p, uid);
    }
}

#[test]
fn a_killed_listen_connection_is_reconciled() {
    let p = pair();
    let mut client = p.s.db.client();

    // The listeners are there and named as the contract says.
    let named = p.s.db.query_i64(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' \
         AND application_name = 'order-service-listener'",
        p.s.db.name
    ));
    assert_eq!(
        named, 2,
        "one order-service-listener connection per replica"
    );

    let mut all: Vec<String> = Vec::new();
    for round in 0..8 {
        // Another writer commits while the listeners are down: the
        // terminations and the inserts go in one transaction, so the NOTIFY
        // fires at a commit a millisecond after the LISTEN connections died,
        // before they can be back.
        let mut tx = client.transaction().unwrap();
        let ended = terminate_listeners(&mut tx, &p.s.db);
        if round == 0 {
            assert_eq!(ended, 2, "both listeners terminated");
        }
        for i in 0..5 {
            let uid = format!("{}_direct_{round}_{i}", unique("sql"));
            let body = String::from_utf8(order_with_uid(&uid)).unwrap();
            tx.execute(
                "INSERT INTO orders(order_uid, data) VALUES ($1, $2::text::jsonb)",
                &[&uid, &body],
            )
            .unwrap();
            all.push(uid);
        }
        tx.commit().unwrap();
        // ...and the replicas ingest through NATS.
        let orders = many_orders(&format!("round{round}"), 20);
        p.publisher.publish_many(&p.s.names.subject, &orders);
        all.extend(orders.into_iter().map(|(u, _)| u));
        std::thread::sleep(Duration::from_millis(100));
    }
    let uids: Vec<&str> = all.iter().map(String::as_str).collect();
    // Well under the service's periodic reconcile (30 s): what a replica
    // missed must be reconciled when its LISTEN connection comes back.
    wait_all_served(&p.a, "A", &uids, Duration::from_secs(10));
    wait_all_served(&p.b, "B", &uids, Duration::from_secs(10));
    for uid in uids.iter().step_by(7) {
        assert_identical(&p, uid);
    }

    // The listeners came back: a new row arrives by notification again.
    wait_until(
        Duration::from_secs(15),
        "both listeners reconnected",
        || {
            p.s.db.query_i64(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' \
             AND application_name = 'order-service-listener'",
                p.s.db.name
            )) == 2
        },
    );
    let uid = unique("after");
    let body = String::from_utf8(order_with_uid(&uid)).unwrap();
    client
        .execute(
            "INSERT INTO orders(order_uid, data) VALUES ($1, $2::text::jsonb)",
            &[&uid, &body],
        )
        .unwrap();
    wait_all_served(&p.a, "A", &[&uid], Duration::from_secs(5));
    wait_all_served(&p.b, "B", &[&uid], Duration::from_secs(5));
}
