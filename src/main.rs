//! The wiring, and nothing else. Start-up waits (boundedly) for PostgreSQL
//! and NATS, migrates, and binds the HTTP port; then these threads run:
//!
//! ```text
//! JetStream ─▶ [ingest] ─Batch (bounded 2)─▶ [writer] ─▶ PostgreSQL ─NOTIFY─▶ [listener] ─▶ OrderCache
//!                                             acks after commit                               ▲ read
//!                                                                          [http-0..N] ───────┘
//! [signals] fires the shutdown channel; [watchdog] proves the listener still answers.
//! ```
//!
//! Shutdown: ingest stops fetching and drops its sender; the writer stores
//! and acks what it holds; the listener stops; then the HTTP pool.

use clap::Parser;
use crossbeam_channel::{bounded, select, unbounded};
use order_service::cache::OrderCache;
use order_service::config::Config;
use order_service::connections;
use order_service::health::Health;
use order_service::http::{self, HttpState};
use order_service::ingest::{self, Batch, Consumer};
use order_service::lifecycle::{self, Shutdown, ShutdownTrigger};
use order_service::listener;
use order_service::metrics::Metrics;
use order_service::store::{self, Database};
use order_service::stream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let config = Config::parse();
    env_logger::Builder::new()
        .parse_filters(&config.log)
        .format(|out, record| {
            use std::io::Write;
            writeln!(
                out,
                "[{} {:<5} {}] {}",
                out.timestamp_millis(),
                record.level(),
                record.target(),
                one_line(&record.args().to_string())
            )
        })
        .init();
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("order-service: {message}");
            ExitCode::FAILURE
        }
    }
}

/// A log message as one line: control characters (newlines, ESC) from
/// servers' error messages or rejected input are written as escapes, so no
/// text can forge a log line or drive a terminal.
fn one_line(message: &str) -> std::borrow::Cow<'_, str> {
    if !message.contains(char::is_control) {
        return message.into();
    }
    let mut line = String::with_capacity(message.len() + 16);
    for c in message.chars() {
        if c.is_control() {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
    }
    line.into()
}

fn run(config: &Config) -> Result<(), String> {
    if let Some(limit) = lifecycle::raise_open_files_limit() {
        log::debug!("open files limit: {limit}");
    }
    let database = Database::from_url(
        &config.database_url,
        config.database_password_file.as_deref(),
    )?;
    let names = stream::Names {
        stream: config.nats_stream.clone(),
        subject: config.nats_subject.clone(),
        consumer: config.nats_consumer.clone(),
        replicas: config.nats_replicas,
        ack_wait: config.ack_wait(),
    };
    let (trigger, shutdown) = lifecycle::shutdown_channel();
    handle_signals(trigger.clone())?;

    // Start-up: each server gets until the deadline to answer.
    let deadline = Instant::now() + config.startup_timeout();
    let mut client = wait_for_postgres(&database, deadline, &shutdown)?;
    let applied = store::migrate(&mut client).map_err(|e| {
        format!(
            "migrations failed on {}: {}",
            database.display,
            store::describe(&e)
        )
    })?;
    if !applied.is_empty() {
        log::info!("applied migrations {applied:?}");
    }
    drop(client);
    // The cache's start-up load needs PostgreSQL alone: it runs while NATS
    // is connected and the socket bound (about 0.4 s of a restart).
    let threads = Threads::start_listener(&database, &shutdown);
    let consumer = Consumer::start(
        &config.nats_url,
        names,
        usize::from(config.ingest_batch),
        config.max_message_bytes,
        deadline,
        &shutdown,
    )?;
    let (server, local) = http::bind(config.http_addr)
        .map_err(|e| format!("cannot listen on {}: {e}", config.http_addr))?;
    log::info!("listening on http://{local}");
    serve(
        config,
        database,
        consumer,
        (server, local),
        threads,
        trigger,
        shutdown,
    )
}

/// What the threads share, made when the first of them, the listener,
/// starts.
struct Threads {
    cache: Arc<OrderCache>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    ended: crossbeam_channel::Sender<(String, lifecycle::ThreadResult)>,
    thread_ended: crossbeam_channel::Receiver<(String, lifecycle::ThreadResult)>,
    listener: std::thread::JoinHandle<()>,
}

impl Threads {
    fn start_listener(database: &Database, shutdown: &Shutdown) -> Threads {
        let cache = Arc::new(OrderCache::new());
        let health = Arc::new(Health::new());
        let metrics = Arc::new(Metrics::new());
        let (ended, thread_ended) = unbounded();
        let listener = lifecycle::spawn("listener", &ended, {
            let (database, cache, shutdown, health, metrics) = (
                database.clone(),
                cache.clone(),
                shutdown.clone(),
                health.clone(),
                metrics.clone(),
            );
            move || listener::run(database, &cache, shutdown, &health, &metrics)
        });
        Threads {
            cache,
            health,
            metrics,
            ended,
            thread_ended,
            listener,
        }
    }
}

/// Runs the threads until shutdown, then stops them in order.
fn serve(
    config: &Config,
    database: Database,
    consumer: Consumer,
    (server, local): (tiny_http::Server, std::net::SocketAddr),
    threads: Threads,
    trigger: ShutdownTrigger,
    shutdown: Shutdown,
) -> Result<(), String> {
    let Threads {
        cache,
        health,
        metrics,
        ended,
        thread_ended,
        listener,
    } = threads;
    let (to_writer, from_consumer) = bounded::<Batch>(2);
    let acks = consumer.ack_flusher();

    let writer = lifecycle::spawn("writer", &ended, {
        let (shutdown, health, metrics) = (shutdown.clone(), health.clone(), metrics.clone());
        let ack_wait = config.ack_wait();
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
    let ingest = lifecycle::spawn("ingest", &ended, {
        let (shutdown, health, metrics) = (shutdown.clone(), health.clone(), metrics.clone());
        move || ingest::run_consumer(consumer, to_writer, shutdown, &health, &metrics)
    });
    let server = Arc::new(server);
    let stopping = Arc::new(AtomicBool::new(false));
    let state = Arc::new(HttpState {
        cache,
        health,
        metrics,
    });
    let workers: Vec<_> = (0..config.http_workers())
        .map(|i| {
            let (server, state, stopping) = (server.clone(), state.clone(), stopping.clone());
            lifecycle::spawn(format!("http-{i}"), &ended, move || {
                http::run_worker(&server, &state, &stopping);
                Ok(())
            })
        })
        .collect();
    let watchdog = lifecycle::spawn("watchdog", &ended, {
        let shutdown = shutdown.clone();
        move || watch_listener(local, &shutdown)
    });
    let keeper = lifecycle::spawn("http-keeper", &ended, {
        let (shutdown, state, idle) = (shutdown.clone(), state.clone(), config.http_idle_timeout());
        move || keep_connections(local, idle, &shutdown, &state.metrics)
    });

    let failure = select! {
        recv(shutdown.receiver()) -> _ => None,
        recv(thread_ended) -> ended => ended.ok(),
    };
    if let Some((name, result)) = &failure {
        log::error!("thread {name} ended on its own ({result:?}); shutting down");
        trigger.fire();
    }
    log::info!("shutting down");
    for handle in [ingest, writer, listener, watchdog, keeper] {
        let _ = handle.join();
    }
    acks.flush();
    stopping.store(true, Ordering::Release);
    for _ in &workers {
        server.unblock();
    }
    for handle in workers {
        let _ = handle.join();
    }
    for (name, result) in thread_ended.try_iter() {
        if let Err(why) = result {
            log::error!("thread {name}: {why}");
        }
    }
    log::info!("stopped");
    match failure {
        Some((name, result)) => Err(format!("thread {name} ended unexpectedly: {result:?}")),
        None => Ok(()),
    }
}

/// SIGTERM or SIGINT begins a graceful shutdown; a second one exits at once.
fn handle_signals(trigger: ShutdownTrigger) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut received = 0;
            for signal in signals.forever() {
                received += 1;
                if received > 1 {
                    log::warn!("signal {signal} again: exiting now");
                    std::process::exit(1);
                }
                log::info!("signal {signal}: draining and stopping");
                trigger.fire();
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}

/// Every 10 s, proves the HTTP listener still accepts; three failures in a
/// row end the process (non-zero), so its supervisor restarts it.
fn watch_listener(local: std::net::SocketAddr, shutdown: &Shutdown) -> lifecycle::ThreadResult {
    let mut failures = 0;
    while !shutdown.sleep(Duration::from_secs(10)) {
        match http::self_check(local) {
            Ok(()) => failures = 0,
            Err(err) => {
                failures += 1;
                log::warn!("HTTP self-check failed ({failures}/3): {err}");
                if failures >= 3 {
                    return Err(format!(
                        "the HTTP listener on {local} no longer answers: {err}"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Four times a second: closes the HTTP connections silent for `idle`, and
/// for each connection tiny_http's pool left without a thread, connects to
/// the listener and hangs up. The pool has no idle thread then, so it starts
/// one for that connection, which ends at once; the new thread then takes
/// the queued connection. With very many connections a look takes longer,
/// and the pause after it grows so that looking stays under 5 % of a core.
fn keep_connections(
    local: std::net::SocketAddr,
    idle: Duration,
    shutdown: &Shutdown,
    metrics: &Metrics,
) -> lifecycle::ThreadResult {
    let mut pause = Duration::from_millis(250);
    while !shutdown.sleep(pause) {
        let started = Instant::now();
        let tended = connections::tend(local.port(), idle);
        pause = (started.elapsed() * 20).max(Duration::from_millis(250));
        if tended != connections::Tended::default() {
            log::debug!("HTTP connections: {tended:?}");
        }
        for _ in 0..tended.stalled {
            let _ = http::connect_and_hang_up(local);
        }
        metrics
            .idle_connections_closed
            .fetch_add(tended.closed as u64, Ordering::Relaxed);
        metrics
            .stalled_connections_freed
            .fetch_add(tended.stalled as u64, Ordering::Relaxed);
    }
    Ok(())
}

fn wait_for_postgres(
    database: &Database,
    deadline: Instant,
    shutdown: &Shutdown,
) -> Result<postgres::Client, String> {
    let mut waiting = false;
    loop {
        let err = match database.connect("order-service-migrate") {
            Ok(client) => return Ok(client),
            Err(err) => err,
        };
        let why = store::describe(&err);
        let code = err.code().map(|c| c.code().to_owned()).unwrap_or_default();
        if code == "3D000" {
            return Err(format!(
                "PostgreSQL at {} answers, but the database does not exist ({why}): create it \
                 (`createdb`; `make run` does)",
                database.display
            ));
        }
        if !store::is_transient(&err) {
            return Err(format!(
                "PostgreSQL at {} refused the connection: {why}",
                database.display
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "cannot connect to PostgreSQL at {} ({why}): is it running? `make services` starts one",
                database.display
            ));
        }
        if !waiting {
            log::warn!("waiting for PostgreSQL at {} ({why})", database.display);
            waiting = true;
        }
        if shutdown.sleep(Duration::from_millis(500)) {
            return Err("interrupted while waiting for PostgreSQL".into());
        }
    }
}
