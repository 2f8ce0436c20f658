//! Configuration: every setting is an environment variable and a `--flag`
//! of the same name (clap prints both, with defaults, in `--help`).

use crate::logging::LogFormat;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Orders from NATS JetStream, validated, stored in PostgreSQL, cached in
/// memory and served over HTTP.
///
/// Every option can also be set by the environment variable shown with it.
#[derive(Debug, Clone, Parser)]
#[command(version, about, long_about = None, max_term_width = 100)]
pub struct Config {
    /// PostgreSQL connection URL. The database must exist; the tables are
    /// created by the service's migrations.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/orders",
        hide_env_values = true
    )]
    pub database_url: String,

    /// File holding the PostgreSQL password (a Kubernetes secret), used
    /// instead of a password in DATABASE_URL.
    #[arg(long, env = "DATABASE_PASSWORD_FILE")]
    pub database_password_file: Option<PathBuf>,

    /// NATS server URL; several, separated by commas, for a cluster.
    /// User and password (nats://USER:PASSWORD@host:4222) or a token
    /// (nats://TOKEN@host:4222) may be part of it; tls:// asks for TLS.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub nats_url: String,

    /// CA certificate (PEM) for TLS to PostgreSQL; alone it means
    /// sslmode=verify-full. sslrootcert in DATABASE_URL takes precedence.
    #[arg(long, env = "DATABASE_CA_FILE")]
    pub database_ca_file: Option<PathBuf>,

    #[command(flatten)]
    pub nats_files: crate::nats_auth::NatsFileArgs,

    /// JetStream stream holding the orders (created if missing).
    #[arg(long, env = "NATS_STREAM", default_value = "ORDERS")]
    pub nats_stream: String,

    /// Subject the orders are published on.
    #[arg(long, env = "NATS_SUBJECT", default_value = "orders")]
    pub nats_subject: String,

    /// Durable pull consumer, shared by every replica (created if missing).
    #[arg(long, env = "NATS_CONSUMER", default_value = "order-service")]
    pub nats_consumer: String,

    /// Replicas of the stream when the service creates it (3 on a NATS
    /// cluster).
    #[arg(long, env = "NATS_REPLICAS", default_value_t = 1)]
    pub nats_replicas: usize,

    /// Seconds a delivered message may stay unacked before JetStream
    /// redelivers it (the durable consumer's ack_wait).
    #[arg(long, env = "NATS_ACK_WAIT", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub nats_ack_wait: u64,

    /// Address the HTTP server listens on (port 0 picks a free port).
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Address of the admin port (e.g. 0.0.0.0:9090). When set, /metrics,
    /// the /orders listing, /random-order and /rejections are served only
    /// there, and the HTTP_ADDR port answers 404 for them; unset, every
    /// route is served on HTTP_ADDR.
    #[arg(long, env = "ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,

    /// HTTP worker threads [default: the number of CPUs].
    #[arg(long, env = "HTTP_WORKERS")]
    pub http_workers: Option<usize>,

    /// Seconds an HTTP connection may wait for its next request (keep-alive)
    /// or for more of its request before the service closes it.
    #[arg(long, env = "HTTP_IDLE_TIMEOUT", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub http_idle_timeout: u64,

    /// Log filter, e.g. `info`, `debug` or `order_service=debug,warn`.
    #[arg(long = "log", env = "RUST_LOG", default_value = "info")]
    pub log: String,

    /// Log line format: `text` for people, `json` for a log pipeline (one
    /// object per line: timestamp, level, target, message and the line's
    /// fields, such as `order_uid` or `stream_sequence`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Largest message accepted, in bytes; larger ones are dead-lettered.
    /// Keep it at or under the NATS server's max_payload (1 MiB by default).
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Messages fetched and committed per batch.
    #[arg(long, env = "INGEST_BATCH", default_value_t = 512,
          value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub ingest_batch: u16,

    /// Bytes the order cache may hold (bodies plus per-entry overhead), with
    /// an optional KiB/MiB/GiB suffix (`512MiB`). Unset or 0: unbounded,
    /// every stored order cached. With a budget, misses are read from
    /// PostgreSQL by the loaders.
    #[arg(long, env = "CACHE_MAX_BYTES", value_parser = parse_bytes)]
    pub cache_max_bytes: Option<u64>,

    /// Loader threads, each with its own PostgreSQL connection, that read
    /// cache misses, pages and dead letters for the HTTP side.
    #[arg(long, env = "CACHE_LOADERS", default_value_t = 2,
          value_parser = clap::value_parser!(u8).range(1..=64))]
    pub cache_loaders: u8,

    /// Seconds to wait at start for PostgreSQL and NATS to answer before
    /// giving up with a non-zero exit.
    #[arg(long, env = "STARTUP_TIMEOUT", default_value_t = 30)]
    pub startup_timeout: u64,
}

impl Config {
    pub fn http_workers(&self) -> usize {
        self.http_workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .max(1)
    }

    pub fn ack_wait(&self) -> Duration {
        Duration::from_secs(self.nats_ack_wait)
    }

    pub fn http_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.http_idle_timeout)
    }

    pub fn startup_timeout(&self) -> Duration {
        Duration::from_secs(self.startup_timeout)
    }

    /// The cache budget, `None` when unbounded.
    pub fn cache_budget(&self) -> Option<u64> {
        self.cache_max_bytes.filter(|bytes| *bytes > 0)
    }
}

/// `1234`, `64KiB`, `512MiB`, `2GiB` (binary units; spaces allowed before the
/// unit).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size: use bytes or a KiB/MiB/GiB suffix"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use KiB, MiB or GiB"
            ))
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_option_has_an_environment_variable() {
        let command = Config::command();
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            assert!(
                arg.get_env().is_some(),
                "--{id} has no environment variable"
            );
        }
        command.debug_assert();
    }

    #[test]
    fn defaults_match_the_design() {
        let config = Config::try_parse_from(["order-service"]).unwrap();
        assert_eq!(config.nats_stream, "ORDERS");
        assert_eq!(config.nats_subject, "orders");
        assert_eq!(config.nats_consumer, "order-service");
        assert_eq!(config.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(config.max_message_bytes, 1 << 20);
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.admin_addr, None);
        let config =
            Config::try_parse_from(["order-service", "--admin-addr", "0.0.0.0:9090"]).unwrap();
        assert_eq!(config.admin_addr.map(|a| a.port()), Some(9090));
        assert_eq!(config.cache_budget(), None);
        assert_eq!(config.cache_loaders, 2);
        let zero = Config::try_parse_from(["order-service", "--cache-max-bytes", "0"]).unwrap();
        assert_eq!(zero.cache_budget(), None);
    }

    #[test]
    fn cache_sizes_take_binary_suffixes() {
        assert_eq!(parse_bytes("1234"), Ok(1234));
        assert_eq!(parse_bytes("64KiB"), Ok(64 << 10));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("2 GiB"), Ok(2 << 30));
        for bad in ["", "MiB", "12MB", "1.5GiB", "-1", "99999999999999GiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }
}
