//! User story: "three replicas share the work, every one holds every order,
//! and killing them all at once loses nothing". Real PostgreSQL and NATS.

#![allow(deprecated)] // the nats sync API, used here to probe the cluster

mod common;

use common::*;
use std::time::{Duration, Instant};

fn digest(service: &Service) -> String {
    let metrics = service.metrics();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("order_service_cache_digest_info{"))
        .expect("digest metric");
    line.split('"').nth(1).unwrap().to_owned()
}

fn cached(service: &Service) -> f64 {
    service
        .metric("order_service_cache_orders", &[])
        .unwrap_or(0.0)
}

fn wait_all_cached(services: &[Service], n: usize, timeout: Duration) {
    wait_until(timeout, &format!("every replica caches {n} orders"), || {
        services.iter().all(|s| cached(s) as usize == n)
    });
}

#[test]
fn three_replicas_store_each_order_once_and_hold_identical_caches() {
    let db = TestDb::create();
    let names = NatsNames::unique();
    let _stream = names.guard(SHARED_NATS);
    let cfg = ServiceConfig::new(&db, SHARED_NATS, &names).env("NATS_ACK_WAIT", "5");
    let mut replicas: Vec<Service> = (0..3).map(|_| Service::start_ready(&cfg)).collect();
    let publisher = Publisher::connect(SHARED_NATS);

    let first = many_orders("three", 20_000);
    let started = Instant::now();
    publisher.publish_many(&names.subject, &first);
    wait_all_cached(&replicas, 20_000, Duration::from_secs(120));
    let elapsed = started.elapsed();
    assert_eq!(db.order_count(), 20_000);
    let digests: Vec<String> = replicas.iter().map(digest).collect();
    assert!(
        digests.iter().all(|d| *d == digests[0]),
        "caches differ: {digests:?}"
    );
    let shares: Vec<f64> = replicas
        .iter()
        .map(|s| {
            s.metric("order_service_orders_stored_total", &[])
                .unwrap_or(0.0)
        })
        .collect();
    assert_eq!(shares.iter().sum::<f64>() as usize, 20_000, "{shares:?}");
    eprintln!(
        "three replicas: 20000 orders stored once and in all three caches in {:.1} s; \
         stored by each replica: {shares:?}",
        elapsed.as_secs_f64()
    );

    // kill -9 all three while 5,000 more are being ingested, then restart.
    let second = many_orders("killall", 5_000);
    let publishing = {
        let subject = names.subject.clone();
        std::thread::spawn(move || Publisher::connect(SHARED_NATS).publish_many(&subject, &second))
    };
    wait_until(
        Duration::from_secs(60),
        "ingest of the second wave under way",
        || db.order_count() > 20_000,
    );
    for replica in &mut replicas {
        replica.kill9();
    }
    let at_kill = db.order_count();
    publishing.join().unwrap();
    let started = Instant::now();
    let replicas: Vec<Service> = (0..3).map(|_| Service::start_ready(&cfg)).collect();
    wait_all_cached(&replicas, 25_000, Duration::from_secs(120));
    assert_eq!(db.order_count(), 25_000, "lost or duplicated rows");
    let digests: Vec<String> = replicas.iter().map(digest).collect();
    assert!(
        digests.iter().all(|d| *d == digests[0]),
        "caches differ: {digests:?}"
    );
    eprintln!(
        "kill -9 of all three replicas with {at_kill} of 25000 stored: 0 lost, 0 duplicated, \
         all caches complete {:.1} s after the restart",
        started.elapsed().as_secs_f64()
    );
}

/// A three-node JetStream cluster on loopback; its nodes die with it.
struct NatsCluster {
    nodes: Vec<std::process::Child>,
    urls: Vec<String>,
}

impl NatsCluster {
    fn start() -> NatsCluster {
        let dir = target_tmp().join(unique("natscluster"));
        let client_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes: Vec<String> = route_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        let nodes = (0..3)
            .map(|i| {
                let log = std::fs::File::create(
                    log_dir().join(format!("{}-n{i}.log", unique("natscluster"))),
                )
                .unwrap();
                std::process::Command::new("nats-server")
                    .args(["-js", "-sd"])
                    .arg(dir.join(format!("n{i}")))
                    .args(["-a", "127.0.0.1", "-p", &client_ports[i].to_string()])
                    .args(["--cluster_name", "orders", "-n", &format!("n{i}")])
                    .args(["--cluster", &routes[i], "--routes", &routes.join(",")])
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .expect("spawn nats-server")
            })
            .collect();
        let urls = client_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        let cluster = NatsCluster { nodes, urls };
        // JetStream needs a meta leader before an R3 stream can be created.
        let js = jetstream(&cluster.url_list());
        let probe = unique("PROBE").to_uppercase();
        wait_until(
            Duration::from_secs(60),
            "the JetStream cluster accepts an R3 stream",
            || {
                js.add_stream(nats::jetstream::StreamConfig {
                    name: probe.clone(),
                    subjects: vec![probe.to_lowercase()],
                    num_replicas: 3,
                    ..Default::default()
                })
                .is_ok()
            },
        );
        let _ = js.delete_stream(&probe);
        cluster
    }

    fn url_list(&self) -> String {
        self.urls.join(",")
    }

    fn kill9(&mut self, node: usize) {
        let _ = self.nodes[node].kill();
        let _ = self.nodes[node].wait();
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in 0..self.nodes.len() {
            self.kill9(node);
        }
    }
}

#[test]
fn a_nats_cluster_node_killed_mid_ingest_loses_nothing() {
    let mut cluster = NatsCluster::start();
    let db = TestDb::create();
    let names = NatsNames::unique();
    let cfg = ServiceConfig::new(&db, &cluster.url_list(), &names)
        .env("NATS_REPLICAS", "3")
        .env("NATS_ACK_WAIT", "5");
    let service = Service::start_ready(&cfg);
    let publisher = Publisher::connect(&cluster.url_list());

    publisher.publish_many(&names.subject, &many_orders("before", 1_000));
    wait_until(Duration::from_secs(30), "ingest under way", || {
        db.order_count() > 0
    });
    let started = Instant::now();
    cluster.kill9(2);
    publisher.publish_many(&names.subject, &many_orders("after", 1_000));
    wait_until(Duration::from_secs(90), "all 2,000 orders cached", || {
        cached(&service) as usize == 2_000
    });
    assert_eq!(db.order_count(), 2_000, "lost or duplicated rows");
    eprintln!(
        "NATS cluster: node n2 killed mid-ingest; 2000 of 2000 stored and cached {:.1} s later",
        started.elapsed().as_secs_f64()
    );
}
