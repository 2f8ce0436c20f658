//! The wiring, and nothing else. Start-up waits (boundedly) for PostgreSQL
//! and NATS, migrates, binds the HTTP socket and writes the start-up line
//! to stdout; then these threads run:
//!
//! ```text
//! JetStream ─▶ [ingest] ─Batch (bounded 2)─▶ [writer-0,1] ─▶ PostgreSQL ─NOTIFY─▶ [listener] ─▶ OrderCache
//!                                               acks after commit                               ▲ read
//!                                                                            [http-0..N] ───────┘
//! [loader-0..N] read PostgreSQL for the HTTP workers (misses, pages, dead
//! letters), fed by a bounded channel; a worker parks a missed order's
//! request with a loader, which answers it, and goes on; [loader-deadlines]
//! answers 503 for what no loader answered in time. [signals] fires the shutdown channel;
//! [watchdog] proves the HTTP socket still answers; [http-keeper] closes idle
//! connections and frees stalled ones. With ADMIN_ADDR, [http-admin-0]
//! answers on the admin socket, which alone serves the admin routes, and
//! [admin-keeper] tends its connections.
//! ```
//!
//! Shutdown, in the order declared at the end of `run`: ingest stops
//! fetching and drops its sender, the writers store and ack what they hold,
//! the listener, the loaders and the HTTP helpers stop; the acks are
//! flushed; then the HTTP workers, which answer until the last moment.

use clap::Parser;
use crossbeam_channel::bounded;
use order_service::cache::OrderCache;
use order_service::config::Config;
use order_service::health::Health;
use order_service::http::{self, workarounds, HttpState};
use order_service::ingest::{self, Batch, Consumer};
use order_service::lifecycle::{self, Stop, Supervisor};
use order_service::metrics::Metrics;
use order_service::store::{self, Database};
use order_service::{listener, loader, logging, stream};
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

fn main() -> ExitCode {
    let config = Config::parse();
    logging::init(&config.log, config.log_format);
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            logging::fatal(&message);
            ExitCode::FAILURE
        }
    }
}

fn run(config: &Config) -> Result<(), String> {
    if let Some(limit) = lifecycle::raise_open_files_limit() {
        log::debug!("open files limit: {limit}");
    }
    let database = Database::from_url(
        &config.database_url,
        config.database_password_file.as_deref(),
        config.database_ca_file.as_deref(),
    )?;
    let (trigger, shutdown) = lifecycle::shutdown_channel();
    lifecycle::stop_on_signals(trigger.clone())?;
    // Start-up: each server gets until the deadline to answer.
    let deadline = Instant::now() + config.startup_timeout();
    store::connect_and_migrate(&database, deadline, &shutdown)?;

    let (loader, loader_jobs) = loader::channel();
    if let Some(budget) = config.cache_budget() {
        lifecycle::hold_allocator_arenas();
        http::encoding::GzipCache::limit_shared(usize::try_from(budget / 8).unwrap_or(usize::MAX));
    }
    let cache = Arc::new(OrderCache::with_loader(loader, config.cache_budget()));
    let health = Arc::new(Health::new());
    // `/readyz` answers 503 from the moment shutdown begins (draining).
    health.drain_on(shutdown.clone());
    let metrics = Arc::new(Metrics::new());
    let mut threads = Supervisor::new();
    // The loaders: the HTTP side's only way to PostgreSQL (cache misses,
    // pages, dead letters), each with its own connection.
    for i in 0..config.cache_loaders {
        let name = format!("loader-{i}");
        let (database, jobs, shutdown) = (database.clone(), loader_jobs.clone(), shutdown.clone());
        threads.spawn(name.clone(), move || {
            loader::run(database, name, jobs, shutdown)
        });
    }
    // A miss parked by an HTTP worker is answered 503 at the deadline when
    // no loader answered it (one stuck in a query cannot say so itself).
    threads.spawn("loader-deadlines", {
        let (jobs, shutdown) = (loader_jobs.clone(), shutdown.clone());
        move || loader::run_deadlines(jobs, shutdown)
    });
    drop(loader_jobs);
    // The cache's start-up load needs PostgreSQL alone: it runs while NATS
    // is connected and the socket bound.
    threads.spawn("listener", {
        let (database, cache, health, metrics) = (
            database.clone(),
            cache.clone(),
            health.clone(),
            metrics.clone(),
        );
        let shutdown = shutdown.clone();
        move || listener::run(database, &cache, shutdown, &health, &metrics)
    });
    let nats =
        order_service::nats_auth::NatsTarget::new(&config.nats_url, &config.nats_files.files())?;
    let names = stream::Names {
        stream: config.nats_stream.clone(),
        subject: config.nats_subject.clone(),
        consumer: config.nats_consumer.clone(),
        replicas: config.nats_replicas,
        ack_wait: config.ack_wait(),
    };
    let batch = usize::from(config.ingest_batch);
    let consumer = Consumer::start(
        &nats,
        names,
        batch,
        config.max_message_bytes,
        deadline,
        &shutdown,
    )?;
    // C4: with ADMIN_ADDR, the admin routes are served on that socket only.
    let public_routes = match config.admin_addr {
        Some(_) => http::Served::Public,
        None => http::Served::All,
    };
    let mut server = http::Server::bind(config.http_addr, public_routes)
        .map_err(|e| format!("cannot listen on {}: {e}", config.http_addr))?;
    let mut admin = match config.admin_addr {
        Some(addr) => Some(
            http::Server::bind(addr, http::Served::All)
                .map_err(|e| format!("cannot listen on {addr} (ADMIN_ADDR): {e}"))?,
        ),
        None => None,
    };
    let local = server.local();
    log::info!("listening on http://{local}");
    // C1: the one line on stdout, which tells a test or a script the port(s);
    // `http_addr` first, as the contract shows it.
    #[derive(serde::Serialize)]
    struct Started {
        http_addr: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        admin_addr: Option<String>,
    }
    let admin_local = admin.as_ref().map(http::Server::local);
    if let Some(addr) = admin_local {
        log::info!("admin routes on http://{addr}");
    }
    let started = Started {
        http_addr: local.to_string(),
        admin_addr: admin_local.map(|a| a.to_string()),
    };
    println!("{}", serde_json::to_string(&started).unwrap_or_default());
    let _ = std::io::stdout().flush();

    let acks = consumer.ack_flusher();
    let (to_writer, from_consumer) = bounded::<Batch>(2);
    // The writers, each with its own PostgreSQL connection, take batches
    // from the one channel: one commits while another sends its batch.
    for i in 0..ingest::WRITERS {
        threads.spawn(format!("writer-{i}"), {
            let (database, from_consumer) = (database.clone(), from_consumer.clone());
            let (shutdown, health, metrics, ack_wait) = (
                shutdown.clone(),
                health.clone(),
                metrics.clone(),
                config.ack_wait(),
            );
            move || {
                ingest::run_writer(
                    database,
                    from_consumer,
                    ack_wait,
                    shutdown,
                    &health,
                    &metrics,
                )
            }
        });
    }
    drop(from_consumer);
    threads.spawn("ingest", {
        let (shutdown, health, metrics) = (shutdown.clone(), health.clone(), metrics.clone());
        move || ingest::run_consumer(consumer, to_writer, shutdown, &health, &metrics)
    });
    let state = Arc::new(HttpState {
        cache,
        health,
        metrics: metrics.clone(),
    });
    for i in 0..config.http_workers() {
        threads.spawn(format!("http-{i}"), server.worker(state.clone()));
    }
    if let Some(admin) = &mut admin {
        // Scrapes and operators' listings: one worker is plenty, and it
        // leaves the public port's workers alone.
        threads.spawn("http-admin-0", admin.worker(state.clone()));
        let admin_local = admin.local();
        threads.spawn("admin-keeper", {
            let (shutdown, idle, metrics) = (
                shutdown.clone(),
                config.http_idle_timeout(),
                metrics.clone(),
            );
            move || workarounds::keep_connections(admin_local, idle, &shutdown, &metrics)
        });
    }
    threads.spawn("watchdog", {
        let shutdown = shutdown.clone();
        move || workarounds::watch_socket(local, &shutdown)
    });
    threads.spawn("http-keeper", {
        let (shutdown, idle) = (shutdown.clone(), config.http_idle_timeout());
        move || workarounds::keep_connections(local, idle, &shutdown, &metrics)
    });

    let failure = threads.wait(&shutdown, &trigger);
    let stop_order = vec![
        Stop::Join(&[
            "ingest",
            "writer-*",
            "listener",
            "loader-*",
            "watchdog",
            "http-keeper",
            "admin-keeper",
        ]),
        Stop::Run("flush the acks", Box::new(|| acks.flush())),
        Stop::Run(
            "wake the HTTP workers",
            Box::new(|| {
                server.stop();
                admin.iter().for_each(http::Server::stop);
            }),
        ),
        Stop::Join(&["http-*"]),
    ];
    threads.stop(stop_order, failure)
}
