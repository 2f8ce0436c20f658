//! Faults that hang rather than fail (issue 14): a server that goes silent
//! answers nothing and resets nothing. Most tests freeze a private server
//! (or one backend) with SIGSTOP for 20 s during ingest, which is what a
//! partition looks like from the service's side of a connection except that
//! the frozen host's kernel still acknowledges (so TCP-level timeouts do
//! not fire: only the service's own clocks can notice). One cuts a private
//! PostgreSQL off in a network namespace instead, where nothing is
//! acknowledged and the TCP timeouts must end the connections.
//!
//! What must hold: nothing lost or stored twice, `/readyz`'s body names the
//! silent dependency within 10 s while the pod stays ready (200), cached
//! orders are served throughout, and
//! everything is stored within 5 s after the server answers again.

pub mod common;

use common::*;
use std::fs;
use std::thread;
use std::time::{Duration, Instant};

const SILENCE: Duration = Duration::from_secs(20);
const NOTICE_WITHIN: Duration = Duration::from_secs(10);
const CATCH_UP_WITHIN: Duration = Duration::from_secs(5);

/// Processes stopped with SIGSTOP; SIGCONT on `Drop`, so a failing test
/// never leaves a frozen server behind.
struct Frozen(Vec<i32>);

impl Frozen {
    fn freeze(pids: Vec<i32>) -> Frozen {
        assert!(!pids.is_empty(), "nothing to freeze");
        for &pid in &pids {
            // SAFETY: kill(2) with a pid this test found for its own server.
            assert_eq!(
                unsafe { libc::kill(pid, libc::SIGSTOP) },
                0,
                "SIGSTOP {pid}"
            );
        }
        Frozen(pids)
    }

    fn thaw(&mut self) {
        for pid in self.0.drain(..) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.thaw();
    }
}

/// The parent pid in /proc/PID/stat (the field after the parenthesised name).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The private PostgreSQL's postmaster and every backend and helper it forked.
fn postgres_pids(pg: &PrivatePostgres) -> Vec<i32> {
    let pidfile = fs::read_to_string(pg.dir.join("data/postmaster.pid")).unwrap();
    let postmaster: i32 = pidfile.lines().next().unwrap().trim().parse().unwrap();
    let mut pids = vec![postmaster];
    pids.extend(
        all_pids()
            .into_iter()
            .filter(|&pid| parent_of(pid) == Some(postmaster)),
    );
    pids
}

/// The private nats-server: the process whose command line names its store.
fn nats_pid(nats: &PrivateNats) -> i32 {
    let dir = nats.dir.to_string_lossy().into_owned();
    all_pids()
        .into_iter()
        .find(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&dir))
                .unwrap_or(false)
        })
        .expect("the private nats-server's pid")
}

/// Polls `/readyz` and a cached order through the silence: when `/readyz`'s
/// body first named `dependency` as not ok (after `frozen`), and asserting
/// that the cached order answered 200 every time.
fn watch_through_silence(
    service: &Service,
    dependency: &str,
    cached_uid: &str,
    frozen: Instant,
) -> Option<Duration> {
    let mut named = None;
    let mut polls = 0;
    while frozen.elapsed() < SILENCE {
        let (status, body) = service.get_json("/readyz");
        // Readiness is this pod's: a silent dependency is named, and the
        // pod stays in the Service, serving its cache.
        assert_eq!(status, 200, "the pod must stay ready: {body}");
        if named.is_none() && body[dependency] == "unavailable" {
            named = Some(frozen.elapsed());
            eprintln!("[hangs] /readyz after {:?}: {body}", frozen.elapsed());
        }
        assert_eq!(
            service.order_status(cached_uid),
            200,
            "a cached order must be served while {dependency} is silent"
        );
        polls += 1;
        thread::sleep(Duration::from_millis(100));
    }
    assert!(polls > 50, "the service answered only {polls} polls");
    named
}

#[test]
fn postgres_silent_for_20_s_is_named_within_10_s_and_loses_nothing() {
    const TOTAL: usize = 2000;
    let pg = PrivatePostgres::start();
    let s = Setup::with_postgres(&pg.admin_url);
    let mut service = s.start_ready();
    let orders = many_orders("pgsilent", TOTAL);
    // About 5 s of publishing: ingest is under way when the server freezes.
    let publishing = s.ingest_in_background(&orders, 20, Duration::from_millis(50), 100);
    let cached = &orders[0].0;
    wait_until(Duration::from_secs(10), "the first order cached", || {
        service.order_status(cached) == 200
    });

    let at_freeze = s.db.order_count();
    let mut frozen = Frozen::freeze(postgres_pids(&pg));
    let froze = Instant::now();
    let named = watch_through_silence(&service, "postgres", cached, froze);
    frozen.thaw();
    let thawed = Instant::now();

    publishing.join().expect("publisher");
    s.wait_stored(TOTAL, Duration::from_secs(60));
    let stored_after = thawed.elapsed();
    wait_all_cached(&[&service], TOTAL as u64, Duration::from_secs(30));
    let cached_after = thawed.elapsed();
    s.wait_drained(Duration::from_secs(30));
    s.assert_all_stored_once(&orders);
    service.assert_running();
    eprintln!(
        "[figures] PostgreSQL frozen (SIGSTOP) for {} s with {at_freeze} of {TOTAL} stored: \
         named in /readyz after {named:?}; all stored {:.1} s and all cached {:.1} s after \
         SIGCONT; lost 0, duplicated 0",
        SILENCE.as_secs(),
        stored_after.as_secs_f64(),
        cached_after.as_secs_f64(),
    );
    let named = named.expect("/readyz never named PostgreSQL while it was frozen");
    assert!(named <= NOTICE_WITHIN, "PostgreSQL named after {named:?}");
    assert!(
        stored_after <= CATCH_UP_WITHIN,
        "all stored only {stored_after:?} after PostgreSQL answered again"
    );
    service.wait_readyz(200, Duration::from_secs(10));
}

#[test]
fn nats_silent_for_20_s_is_named_within_10_s_and_loses_nothing() {
    const TOTAL: usize = 2000;
    // Both servers private: the test depends on no shared state.
    let pg = PrivatePostgres::start();
    let nats = PrivateNats::start();
    let db = TestDb::create_on(&pg.admin_url);
    let names = NatsNames::unique();
    let mut service = Service::start_ready(&ServiceConfig::new(&db, &nats.url, &names));
    let orders = many_orders("natssilent", TOTAL);
    let publishing = publish_in_background(
        &nats.url,
        &names.subject,
        &orders,
        20,
        Duration::from_millis(50),
    );
    let cached = &orders[0].0;
    wait_until(Duration::from_secs(10), "the first order cached", || {
        service.order_status(cached) == 200
    });

    let at_freeze = db.order_count();
    let mut frozen = Frozen::freeze(vec![nats_pid(&nats)]);
    let froze = Instant::now();
    let named = watch_through_silence(&service, "nats", cached, froze);
    frozen.thaw();
    let thawed = Instant::now();

    // The publisher was frozen out too: what it still had to send goes
    // after the thaw, so "all stored" counts from when it finished.
    publishing.join().expect("publisher");
    let published = Instant::now();
    wait_until(Duration::from_secs(60), "all stored", || {
        db.order_count() == TOTAL as i64
    });
    let stored_after = published.elapsed();
    wait_all_cached(&[&service], TOTAL as u64, Duration::from_secs(30));
    wait_consumer_drained(&nats.url, &names, Duration::from_secs(30));
    assert_eq!(
        db.query_i64("SELECT count(*) FROM rejected_messages"),
        0,
        "nothing dead-lettered"
    );
    service.assert_running();
    eprintln!(
        "[figures] NATS frozen (SIGSTOP) for {} s with {at_freeze} of {TOTAL} stored: named in \
         /readyz after {named:?}; publisher done {:.1} s after SIGCONT, all stored {:.1} s \
         after that; lost 0, duplicated 0",
        SILENCE.as_secs(),
        (published - thawed).as_secs_f64(),
        stored_after.as_secs_f64(),
    );
    let named = named.expect("/readyz never named NATS while it was frozen");
    assert!(named <= NOTICE_WITHIN, "NATS named after {named:?}");
    assert!(
        stored_after <= CATCH_UP_WITHIN,
        "all stored only {stored_after:?} after the last publish"
    );
    service.wait_readyz(200, Duration::from_secs(10));
}

/// Only the listener's backend freezes; the writer's keeps committing. The
/// cache must still catch up: the listener notices (its bounded validity
/// check or the watchdog) and reconnects.
#[test]
fn a_silent_listen_connection_still_lets_the_cache_catch_up() {
    const TOTAL: usize = 2000;
    let pg = PrivatePostgres::start();
    let s = Setup::with_postgres(&pg.admin_url);
    let service = s.start_ready();
    let backend = s.db.query_i64(
        "SELECT pid::int8 FROM pg_stat_activity WHERE application_name = 'order-service-listener'",
    ) as i32;
    let mut frozen = Frozen::freeze(vec![backend]);
    let froze = Instant::now();
    let orders = many_orders("listensilent", TOTAL);
    let publishing = s.ingest_in_background(&orders, 100, Duration::from_millis(20), 100);
    publishing.join().expect("publisher");
    s.wait_stored(TOTAL, Duration::from_secs(30));
    let stored = froze.elapsed();
    wait_all_cached(&[&service], TOTAL as u64, Duration::from_secs(30));
    let cached = froze.elapsed();
    frozen.thaw();
    eprintln!(
        "[figures] the LISTEN backend frozen (SIGSTOP), the writer's not: {TOTAL} stored \
         {:.1} s and all cached {:.1} s after the freeze",
        stored.as_secs_f64(),
        cached.as_secs_f64(),
    );
    assert!(
        cached <= stored + NOTICE_WITHIN,
        "the cache caught up {:?} after the last row was stored",
        cached - stored
    );
    let (status, body) = service.get_json("/readyz");
    assert_eq!((status, &body["postgres"]), (200, &"ok".into()), "{body}");
}

/// Bounded cache (issue 11): the loader's backend frozen. A miss parked on
/// it is answered 503 with `Retry-After` within the deadline,
/// never 404, and never holds the HTTP workers: cached orders answer at
/// once meanwhile, though the misses outnumber the workers four to one
/// (when a worker waited for its miss, they waited 2 s behind them).
#[test]
fn a_frozen_loader_answers_misses_503_in_time_and_holds_no_worker() {
    const TOTAL: usize = 300;
    let pg = PrivatePostgres::start();
    let s = Setup::with_postgres(&pg.admin_url)
        .env("CACHE_MAX_BYTES", "40000")
        .env("CACHE_LOADERS", "1")
        .env("HTTP_WORKERS", "2");
    let service = s.start_ready();
    let orders = many_orders("frozenloader", TOTAL);
    s.publisher().publish_orders(&s.names.subject, &orders);
    s.wait_stored(TOTAL, Duration::from_secs(60));
    let newest = &orders[TOTAL - 1].0;
    wait_until(Duration::from_secs(10), "the newest order cached", || {
        service.order_status(newest) == 200
    });
    // The loader connects on its first miss: the oldest orders are evicted.
    let loader_session = "SELECT count(*) FROM pg_stat_activity \
         WHERE application_name = 'order-service-loader-0'";
    for (uid, _) in &orders[100..] {
        if s.db.query_i64(loader_session) == 1 {
            break;
        }
        assert_eq!(service.order_status(uid), 200);
    }
    let backend = s.db.query_i64(
        "SELECT pid::int8 FROM pg_stat_activity WHERE application_name = 'order-service-loader-0'",
    ) as i32;
    let mut frozen = Frozen::freeze(vec![backend]);
    let froze = Instant::now();
    let (misses, hits) = thread::scope(|scope| {
        // Unknown ids: a bounded cache cannot tell them from evicted ones.
        let misses: Vec<_> = (0..8)
            .map(|i| {
                let service = &service;
                scope.spawn(move || {
                    let uid = format!("frozenloader_unknown_{i}");
                    let answer = service.get_full(&format!("/orders/{uid}"));
                    (uid, answer, froze.elapsed())
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(300));
        let mut hits = Vec::new();
        while froze.elapsed() < Duration::from_millis(1500) {
            let started = Instant::now();
            assert_eq!(service.order_status(newest), 200);
            hits.push(started.elapsed());
        }
        let misses: Vec<_> = misses.into_iter().map(|m| m.join().unwrap()).collect();
        (misses, hits)
    });
    let slowest_hit = hits.iter().max().copied().unwrap_or_default();
    let mut slowest_miss = Duration::ZERO;
    for (uid, answer, took) in misses {
        assert_eq!(answer.status, 503, "{uid}: {}", answer.text());
        assert_eq!(answer.header("Retry-After"), Some("1"), "{uid}");
        slowest_miss = slowest_miss.max(took);
    }
    frozen.thaw();
    eprintln!(
        "[figures] loader backend frozen: 8 misses answered 503 within {slowest_miss:?}; \
         {} hits meanwhile, slowest {slowest_hit:?}",
        hits.len()
    );
    assert!(slowest_miss <= Duration::from_secs(3), "{slowest_miss:?}");
    assert!(
        slowest_hit <= Duration::from_millis(500),
        "a hit waited {slowest_hit:?} behind the parked misses"
    );
    wait_until(
        Duration::from_secs(10),
        "misses answered once thawed",
        || service.order_status("frozenloader_unknown_0") == 404,
    );
}

/// A network namespace holding one end of a veth pair; taking that end
/// down drops every packet with no RST, like a partition (no iptables or
/// netem here). Removed on `Drop`.
struct Netns {
    name: String,
    host_link: String,
    inner_link: String,
}

const HOST_ADDRESS: &str = "10.231.7.1";
const INNER_ADDRESS: &str = "10.231.7.2";

fn ip(args: &[&str]) {
    let status = std::process::Command::new("ip")
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "ip {args:?}: {status}");
}

impl Netns {
    fn create() -> Netns {
        let id = std::process::id() % 100_000;
        let ns = Netns {
            name: format!("hangs{id}"),
            host_link: format!("hgh{id}"),
            inner_link: format!("hgi{id}"),
        };
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_link,
            "type",
            "veth",
            "peer",
            "name",
            &ns.inner_link,
        ]);
        ip(&["link", "set", &ns.inner_link, "netns", &ns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{HOST_ADDRESS}/30"),
            "dev",
            &ns.host_link,
        ]);
        ip(&["link", "set", &ns.host_link, "up"]);
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{INNER_ADDRESS}/30"),
            "dev",
            &ns.inner_link,
        ]);
        ns.exec(&["ip", "link", "set", &ns.inner_link, "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, command: &[&str]) {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(command);
        ip(&args);
    }

    fn cut(&self) {
        self.exec(&["ip", "link", "set", &self.inner_link, "down"]);
    }

    fn heal(&self) {
        self.exec(&["ip", "link", "set", &self.inner_link, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_link])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The private PostgreSQL moved into the namespace, listening on its
/// address only; returns its admin URL.
fn postgres_in(ns: &Netns, pg: &PrivatePostgres) -> String {
    pg.stop_fast();
    let data = pg.dir.join("data");
    let mut hba = fs::OpenOptions::new()
        .append(true)
        .open(data.join("pg_hba.conf"))
        .unwrap();
    std::io::Write::write_all(&mut hba, b"\nhost all all 10.231.7.0/30 trust\n").unwrap();
    let options = format!(
        "-p {} -k {} -c listen_addresses={INNER_ADDRESS} -c fsync=off -c max_connections=50",
        pg.port,
        data.display()
    );
    let log = pg.dir.join("netns.log");
    ns.exec(&[
        "runuser",
        "-u",
        "postgres",
        "--",
        &pg_ctl_path(),
        "-D",
        &data.to_string_lossy(),
        "-l",
        &log.to_string_lossy(),
        "-o",
        &options,
        "-w",
        "-t",
        "30",
        "start",
    ]);
    format!("postgres://postgres@{INNER_ADDRESS}:{}/postgres", pg.port)
}

fn pg_ctl_path() -> String {
    let found = fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|versions| {
            versions
                .filter_map(|v| Some(v.ok()?.path().join("bin/pg_ctl")))
                .find(|p| p.exists())
        });
    found.map_or("pg_ctl".into(), |p| p.to_string_lossy().into_owned())
}

/// A partition (packets dropped, no RST) between the service and PostgreSQL
/// for 20 s mid-ingest. Unlike SIGSTOP, the server's kernel no longer
/// acknowledges, so the TCP timeouts end the writer's stuck connection. Needs
/// root (`ip netns`); skipped otherwise.
#[test]
fn postgres_partitioned_for_20_s_is_named_within_10_s_and_loses_nothing() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: ip netns needs root");
        return;
    }
    const TOTAL: usize = 2000;
    let ns = Netns::create();
    let pg = PrivatePostgres::start();
    let admin_url = postgres_in(&ns, &pg);
    let s = Setup::with_postgres(&admin_url);
    let mut service = s.start_ready();
    let orders = many_orders("pgpartition", TOTAL);
    let publishing = s.ingest_in_background(&orders, 20, Duration::from_millis(50), 100);
    let cached = &orders[0].0;
    wait_until(Duration::from_secs(10), "the first order cached", || {
        service.order_status(cached) == 200
    });

    let at_cut = s.db.order_count();
    ns.cut();
    let cut = Instant::now();
    let named = watch_through_silence(&service, "postgres", cached, cut);
    ns.heal();
    let healed = Instant::now();

    publishing.join().expect("publisher");
    s.wait_stored(TOTAL, Duration::from_secs(60));
    let stored_after = healed.elapsed();
    wait_all_cached(&[&service], TOTAL as u64, Duration::from_secs(30));
    s.wait_drained(Duration::from_secs(30));
    s.assert_all_stored_once(&orders);
    service.assert_running();
    let log = service.log();
    eprintln!(
        "[figures] PostgreSQL partitioned (veth down in a netns) for {} s with {at_cut} of \
         {TOTAL} stored: named in /readyz after {named:?}; all stored {:.1} s after the heal; \
         lost 0, duplicated 0; writer noticed by itself: {}",
        SILENCE.as_secs(),
        stored_after.as_secs_f64(),
        log.contains("writer: PostgreSQL unavailable"),
    );
    // Unlike under SIGSTOP, the writer's own connection must fail (the TCP
    // user timeout), not wait for the partition to heal.
    assert!(
        log.contains("writer: PostgreSQL unavailable"),
        "the writer never noticed the partition"
    );
    let named = named.expect("/readyz never named PostgreSQL while it was cut off");
    assert!(named <= NOTICE_WITHIN, "PostgreSQL named after {named:?}");
    assert!(
        stored_after <= CATCH_UP_WITHIN,
        "all stored only {stored_after:?} after the partition healed"
    );
}
