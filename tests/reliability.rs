//! User story: "whatever fails, every published order is stored exactly once
//! and every replica serves it": one replica killed while the others keep
//! ingesting, PostgreSQL down for longer than the ack wait under two
//! replicas, NATS killed mid-ingest, one node of a three-node NATS cluster
//! killed under an R3 stream, SIGTERM in the middle of a heavy backlog.
//!
//! Each test prints one `[figures]` line (messages, lost, duplicated rows,
//! redeliveries, time to recover) for the README's Reliability table; run
//! with `--nocapture` to see it. "Duplicated" counts rows: a redelivered
//! message is expected after a fault and must be absorbed, which the
//! `redelivered` and `absorbed` figures show. Servers that are stopped are
//! private instances on free loopback ports; NATS_ACK_WAIT is 3 s so that
//! redeliveries happen within the test.
//!
//! Covered elsewhere, not repeated here: three replicas with 20,000 orders
//! and kill -9 of all three (`cluster.rs`), a killed LISTEN connection and
//! out-of-order commits (`replicas.rs`), the service alone killed or
//! PostgreSQL crashing (`faults.rs`), the poison row (`hostile_http.rs`).

// nats 0.26 marks its whole sync API deprecated in favour of async-nats.
#![allow(deprecated)]

pub mod common;

use common::*;
use std::thread;
use std::time::{Duration, Instant};

const ACK_WAIT: &str = "3";

/// Deliveries beyond one per message, from the consumer's own counters.
fn redeliveries(state: &ConsumerState) -> u64 {
    state.delivered_consumer_seq - state.delivered_stream_seq
}

#[test]
fn one_replica_killed_mid_ingest_the_others_take_over_its_messages() {
    const TOTAL: usize = 10_000;
    let s = Setup::shared().env("NATS_ACK_WAIT", ACK_WAIT);
    let mut services = s.replicas(3);

    let orders = many_orders("k1", TOTAL);
    let publishing = s.ingest_in_background(&orders, 500, Duration::from_millis(40), 2_000);
    services[0].kill9();
    let killed = Instant::now();
    let at_kill = s.db.order_count();
    publishing.join().expect("publisher thread");
    let published_after = killed.elapsed();

    s.wait_stored(TOTAL, Duration::from_secs(45));
    let all_stored_after = killed.elapsed();
    s.assert_settled(
        &orders,
        &[&services[1], &services[2]],
        Duration::from_secs(20),
    );

    // The killed replica comes back and loads everything from PostgreSQL.
    let restarted = Instant::now();
    services[0] = s.start_ready();
    wait_all_cached(&[&services[0]], TOTAL as u64, Duration::from_secs(20));
    let reloaded_after = restarted.elapsed();
    let all: Vec<&Service> = services.iter().collect();
    assert_identical_caches(&all);

    let state = s.consumer();
    let by_survivors = services[1].stored_total() + services[2].stored_total();
    let absorbed = services[1].duplicates_total() + services[2].duplicates_total();
    eprintln!(
        "[figures] one of three replicas killed (kill -9) with {at_kill} of {TOTAL} stored: \
         lost 0, duplicated rows 0; stored by the killed replica {}, by the two others \
         {by_survivors}; redelivered {} (absorbed as duplicates: {absorbed}); publishing ended \
         {:.1} s and the last order was stored {:.1} s after the kill; the restarted replica \
         cached all {TOTAL} in {:.1} s, digest equal to the others",
        TOTAL as u64 - by_survivors,
        redeliveries(&state),
        published_after.as_secs_f64(),
        all_stored_after.as_secs_f64(),
        reloaded_after.as_secs_f64(),
    );
}

#[test]
fn postgres_down_longer_than_the_ack_wait_under_two_replicas_loses_nothing() {
    const TOTAL: usize = 4_000;
    const OUTAGE: Duration = Duration::from_secs(8);
    let pg = PrivatePostgres::start();
    let s = Setup::with_postgres(&pg.admin_url).env("NATS_ACK_WAIT", ACK_WAIT);
    let mut services = s.replicas(2);
    let pids: Vec<u32> = services.iter().map(Service::pid).collect();

    let orders = many_orders("pglong", TOTAL);
    let publishing = s.ingest_in_background(&orders, 100, Duration::from_millis(100), 500);
    let at_stop = s.db.order_count();
    let stopped = Instant::now();
    pg.stop_fast();
    for service in &services {
        let readyz = service.wait_dependency("postgres", "unavailable", Duration::from_secs(20));
        assert_eq!(readyz["nats"], "ok", "{readyz}");
    }
    let noticed_after = stopped.elapsed();
    let (_, readyz) = services[0].get_json("/readyz");
    // Down for more than twice the ack wait; the caches keep serving.
    while stopped.elapsed() < OUTAGE {
        for service in &services {
            assert_eq!(service.get("/healthz").0, 200);
            assert_eq!(service.order_status(&orders[0].0), 200);
        }
        thread::sleep(Duration::from_millis(500));
    }
    for service in &mut services {
        service.assert_running();
    }

    pg.restart();
    let restarted = Instant::now();
    for service in &services {
        service.wait_dependency("postgres", "ok", Duration::from_secs(30));
    }
    let ready_after = restarted.elapsed();
    publishing.join().expect("publisher thread");
    s.wait_stored(TOTAL, Duration::from_secs(45));
    let stored_after = restarted.elapsed();
    let all: Vec<&Service> = services.iter().collect();
    s.assert_settled(&orders, &all, Duration::from_secs(20));
    let now: Vec<u32> = services.iter().map(Service::pid).collect();
    assert_eq!(pids, now, "a replica was restarted");

    let state = s.consumer();
    let absorbed: u64 = services.iter().map(Service::duplicates_total).sum();
    eprintln!(
        "[figures] PostgreSQL stopped (pg_ctl stop -m fast) for {:.1} s under two replicas with \
         {at_stop} of {TOTAL} stored: lost 0, duplicated rows 0, no replica restarted; /readyz \
         200 throughout, naming PostgreSQL unavailable {:.2} s after the stop began ({readyz}), ok {:.2} s after it was back, every order stored \
         {:.1} s after it was back; redelivered {} (absorbed as duplicates: {absorbed})",
        OUTAGE.as_secs_f64(),
        noticed_after.as_secs_f64(),
        ready_after.as_secs_f64(),
        stored_after.as_secs_f64(),
        redeliveries(&state),
    );
    // Held and queued batches got progress acks all through the outage.
    assert_eq!(redeliveries(&state), 0, "fetched messages were redelivered");
}

#[test]
fn nats_killed_mid_ingest_the_consumer_resumes_by_itself() {
    const TOTAL: usize = 3_000;
    let mut nats = PrivateNats::start();
    let s = Setup::with_nats(&nats.url).env("NATS_ACK_WAIT", ACK_WAIT);
    let mut service = s.start_ready();
    let pid = service.pid();

    let orders = many_orders("natsmid", TOTAL);
    let publishing = s.ingest_in_background(&orders, 100, Duration::from_millis(50), 500);
    nats.kill9();
    let killed = Instant::now();
    let at_kill = s.db.order_count();
    service.wait_dependency("nats", "unavailable", Duration::from_secs(20));
    assert_eq!(service.order_status(&orders[0].0), 200, "served from cache");
    thread::sleep(Duration::from_secs(2));
    service.assert_running();

    nats.restart();
    let restarted = Instant::now();
    service.wait_dependency("nats", "ok", Duration::from_secs(30));
    let ready_after = restarted.elapsed();
    publishing.join().expect("publisher thread");
    s.wait_stored(TOTAL, Duration::from_secs(45));
    let stored_after = restarted.elapsed();
    s.assert_settled(&orders, &[&service], Duration::from_secs(20));
    assert_eq!(service.pid(), pid, "the service was restarted");
    for (uid, _) in orders.iter().step_by(29) {
        assert_eq!(service.order_status(uid), 200, "{uid}");
    }
    let state = s.consumer();
    eprintln!(
        "[figures] NATS killed (kill -9) for {:.1} s mid-ingest with {at_kill} of {TOTAL} stored: \
         lost 0, duplicated rows 0, service not restarted; /readyz 200 throughout, naming NATS ok {:.2} s after \
         it was back, every order stored {:.1} s after; redelivered {} (absorbed as duplicates: {})",
        (restarted - killed).as_secs_f64(),
        ready_after.as_secs_f64(),
        stored_after.as_secs_f64(),
        redeliveries(&state),
        service.duplicates_total(),
    );
}

#[test]
fn a_nats_cluster_node_killed_mid_ingest_loses_nothing_and_ingest_continues() {
    const TOTAL: usize = 5_000;
    let mut cluster = PrivateNatsCluster::start(3);
    let s = Setup::with_nats(&cluster.urls())
        .env("NATS_REPLICAS", "3")
        .env("NATS_ACK_WAIT", ACK_WAIT);
    let services = s.replicas(2);

    // The service created the stream replicated on all three nodes.
    let info = jetstream(&s.nats_url)
        .stream_info(&s.names.stream)
        .expect("stream info");
    assert_eq!(info.config.num_replicas, 3, "{:?}", info.config);
    assert_eq!(info.cluster.replicas.len(), 2, "{:?}", info.cluster);

    let orders = many_orders("cluster", TOTAL);
    let publishing = s.ingest_in_background(&orders, 100, Duration::from_millis(40), 1_000);
    // Kill the stream's leader: the hardest node to lose.
    let leader = cluster
        .stream_leader(&s.names.stream)
        .expect("stream leader");
    let victim = cluster.index_of(&leader).expect("leader is a node");
    cluster.nodes[victim].kill9();
    let killed = Instant::now();
    let at_kill = s.db.order_count();
    wait_until(
        Duration::from_secs(30),
        "ingest continues without the node",
        || s.db.order_count() >= at_kill + 500,
    );
    let continued_after = killed.elapsed();
    let new_leader = cluster.stream_leader(&s.names.stream);

    publishing.join().expect("publisher thread");
    s.wait_stored(TOTAL, Duration::from_secs(45));
    let stored_after = killed.elapsed();
    let all: Vec<&Service> = services.iter().collect();
    s.assert_settled(&orders, &all, Duration::from_secs(20));
    // Pulls left unanswered while the cluster moved its leaders may have
    // named NATS unavailable for a moment; every replica names it ok again.
    for service in &services {
        service.wait_dependency("nats", "ok", Duration::from_secs(15));
    }
    let state = s.consumer();
    let absorbed: u64 = services.iter().map(Service::duplicates_total).sum();
    eprintln!(
        "[figures] NATS cluster of 3, stream R3, two replicas: the stream leader {leader} killed \
         (kill -9) with {at_kill} of {TOTAL} stored: lost 0, duplicated rows 0; new leader \
         {new_leader:?}; 500 more stored {:.1} s after the kill, all {TOTAL} {:.1} s after; \
         redelivered {} (absorbed as duplicates: {absorbed})",
        continued_after.as_secs_f64(),
        stored_after.as_secs_f64(),
        redeliveries(&state),
    );
}

#[test]
fn sigterm_mid_heavy_ingest_acks_what_was_stored_and_nothing_is_redelivered() {
    const TOTAL: usize = 20_000;
    let s = Setup::shared().env("NATS_ACK_WAIT", ACK_WAIT);
    let ack_wait = Duration::from_secs(ACK_WAIT.parse().unwrap());
    // A backlog: the whole stream is there before the service starts.
    precreate_stream_and_consumer(&s.nats_url, &s.names, ack_wait);
    let orders = many_orders("drain", TOTAL);
    s.publisher().publish_many(&s.names.subject, &orders);

    let mut first = s.start();
    wait_until(Duration::from_secs(30), "ingest under way", || {
        s.db.order_count() >= 4_000
    });
    let took = first.assert_clean_exit();
    let stored_at_exit = s.db.order_count();

    // Longer than the ack wait: anything delivered and not acked would now
    // be pending redelivery.
    thread::sleep(ack_wait + Duration::from_secs(1));
    let state = s.consumer();
    assert_eq!(state.num_ack_pending, 0, "unacked after exit: {state:?}");
    assert_eq!(redeliveries(&state), 0, "redelivered: {state:?}");
    assert_eq!(
        state.ack_floor_stream_seq as i64, stored_at_exit,
        "acked vs stored: {state:?}"
    );
    assert_eq!(
        state.delivered_stream_seq as i64, stored_at_exit,
        "delivered but not stored: {state:?}"
    );

    let second = s.start_ready();
    s.wait_stored(TOTAL, Duration::from_secs(45));
    s.assert_settled(&orders, &[&second], Duration::from_secs(20));
    assert_eq!(
        second.duplicates_total(),
        0,
        "the second process was given orders the first had stored"
    );
    let end = s.consumer();
    assert_eq!(end.delivered_consumer_seq, TOTAL as u64, "{end:?}");
    eprintln!(
        "[figures] SIGTERM during a backlog of {TOTAL}: exit 0 in {:.2} s with {stored_at_exit} \
         stored, every one acked, 0 unacked {} s later, 0 redelivered; the next process stored \
         the other {}, 0 of them already stored; {} deliveries for {TOTAL} messages",
        took.as_secs_f64(),
        ack_wait.as_secs() + 1,
        TOTAL as i64 - stored_at_exit,
        end.delivered_consumer_seq,
    );
}
