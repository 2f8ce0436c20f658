//! PostgreSQL: connecting, migrations, the batch write and the reads the
//! listener needs. Used by the writer and the listener threads, each with its
//! own connection; HTTP workers never come here.
//!
//! Invariant: a batch is one transaction. Orders, their conflicts and the
//! dead letters of the same batch commit together or not at all.

use crate::lifecycle::{self, Retry, Shutdown};
use crate::order::RejectionKind;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{FromSql, ToSql, Type};
use postgres::{Client, Statement};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Migrations, in order. Each runs once, in the transaction that records it.
const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("../sql/0001_init.sql")),
    ("0002_lz4", include_str!("../sql/0002_lz4.sql")),
    ("0003_body_text", include_str!("../sql/0003_body_text.sql")),
    (
        "0004_drop_id_index",
        include_str!("../sql/0004_drop_id_index.sql"),
    ),
    (
        "0005_rejections_by_kind",
        include_str!("../sql/0005_rejections_by_kind.sql"),
    ),
    ("0006_id_index", include_str!("../sql/0006_id_index.sql")),
    (
        "0010_dead_letters_idempotent",
        include_str!("../sql/0010_dead_letters_idempotent.sql"),
    ),
];

/// Serialises migrations across replicas starting together.
const MIGRATION_LOCK: i64 = 0x6f72_6465_7273; // "orders"

/// Dead letters keep at most this many bytes of the raw message.
pub const DEAD_LETTER_PAYLOAD_CAP: usize = 64 * 1024;

/// One stored order as loaded from PostgreSQL: its id, key and the
/// published text that every replica serves byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOrder {
    pub id: i64,
    pub uid: Arc<str>,
    pub body: Arc<[u8]>,
}

/// Where and how to connect, parsed once from `DATABASE_URL`.
#[derive(Clone)]
pub struct Database {
    config: postgres::Config,
    /// TLS as `sslmode` asks (pg_tls.rs).
    tls: crate::pg_tls::Connector,
    /// `host:port/dbname`, for messages (never the password).
    pub display: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The server or the connection failed: retry the same batch later.
    #[error("PostgreSQL is unavailable: {}", describe(.0))]
    Transient(postgres::Error),
    /// The server refused the data itself: retrying cannot help.
    #[error("PostgreSQL rejected the data: {}", describe(.0))]
    Data(postgres::Error),
}

impl Database {
    pub fn from_url(
        url: &str,
        password_file: Option<&Path>,
        ca_file: Option<&Path>,
    ) -> Result<Database, String> {
        let (mut config, tls) = crate::pg_tls::parse(url, ca_file)?;
        if let Some(path) = password_file {
            let password = std::fs::read_to_string(path).map_err(|e| {
                format!("cannot read DATABASE_PASSWORD_FILE {}: {e}", path.display())
            })?;
            config.password(password.trim_end_matches(['\r', '\n']));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        // A partition drops packets and sends no RST: without these a query
        // in flight, or an idle connection, would wait for the kernel's
        // default of about 15 minutes. Data unacknowledged for 8 s, or an
        // idle connection unanswered by 2 keepalive probes after 5 s of
        // quiet, ends the connection with an error, which the writer retries
        // (its batch stays unacked) and the listener reconnects on. A frozen
        // server whose kernel still acknowledges is the listener watchdog's.
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(Duration::from_secs(8));
        }
        config.keepalives_idle(Duration::from_secs(5));
        config.keepalives_interval(Duration::from_secs(2));
        config.keepalives_retries(2);
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(host)) => host.clone(),
            Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => "localhost".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let dbname = config.get_dbname().unwrap_or("postgres").to_owned();
        Ok(Database {
            config,
            tls,
            display: format!("{host}:{port}/{dbname}"),
        })
    }

    /// A new connection, named so that `pg_stat_activity` shows which
    /// thread holds it.
    pub fn connect(&self, application_name: &str) -> Result<Client, postgres::Error> {
        let mut config = self.config.clone();
        config.application_name(application_name);
        config.connect(self.tls.clone())
    }
}

/// Start-up: waits until `deadline` for PostgreSQL to answer, then applies
/// the migrations not yet applied. A missing database or refused
/// credentials fail at once: waiting cannot fix them.
pub fn connect_and_migrate(
    database: &Database,
    deadline: Instant,
    shutdown: &Shutdown,
) -> Result<(), String> {
    let what = format!("PostgreSQL at {}", database.display);
    let mut client = lifecycle::wait_for_server(
        &what,
        "is it running? `make services` starts one",
        deadline,
        shutdown,
        || {
            database.connect("order-service-migrate").map_err(|err| {
                let why = describe(&err);
                if is_missing_database(&err) {
                    Retry::Never(format!(
                        "{what} answers, but the database does not exist ({why}): create it \
                         (`createdb`; `make run` does)"
                    ))
                } else if is_transient(&err) {
                    Retry::Later(why)
                } else {
                    Retry::Never(format!("{what} refused the connection: {why}"))
                }
            })
        },
    )?;
    let applied = migrate(&mut client).map_err(|e| {
        format!(
            "migrations failed on {}: {}",
            database.display,
            describe(&e)
        )
    })?;
    if !applied.is_empty() {
        log::info!("applied migrations {applied:?}");
    }
    Ok(())
}

/// Whether a connection error can go away by waiting (server starting,
/// restarting, unreachable) rather than needing a person (bad password,
/// missing database).
pub fn is_transient(err: &postgres::Error) -> bool {
    match err.code() {
        None => !crate::pg_tls::is_permanent_tls_error(err),
        Some(code) => {
            let code = code.code();
            !(code.starts_with("22")
                || code.starts_with("23")
                || code.starts_with("54")
                || code.starts_with("28")
                || is_missing_database(err))
        }
    }
}

fn is_missing_database(err: &postgres::Error) -> bool {
    err.code().is_some_and(|code| code.code() == "3D000")
}

/// One line for people: the server's own message where there is one, the
/// I/O cause otherwise (`postgres::Error`'s `Display` alone says "db error").
pub fn describe(err: &postgres::Error) -> String {
    if let Some(text) = crate::pg_tls::explain(err) {
        return text;
    }
    if let Some(db) = err.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// Applies the migrations not yet recorded, once, whichever replica gets
/// the advisory lock first; the others wait for it and find nothing to do.
fn migrate(client: &mut Client) -> Result<Vec<&'static str>, postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "SET LOCAL client_min_messages = warning;
         CREATE TABLE IF NOT EXISTS schema_migrations (
             version    text        PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )?;
    let applied: HashSet<String> = tx
        .query("SELECT version FROM schema_migrations", &[])?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut newly_applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        if applied.contains(*version) {
            continue;
        }
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[version],
        )?;
        newly_applied.push(*version);
    }
    tx.commit()?;
    Ok(newly_applied)
}

/// Where a message sits in its JetStream stream: its sequence, and when the
/// server stored it (microseconds since the epoch). The sequence alone
/// restarts when a stream is re-created; the pair identifies one message
/// across redeliveries, which is what makes dead letters idempotent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub sequence: u64,
    pub published_us: i64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.sequence.fmt(f)
    }
}

/// A log field (`stream_sequence = …`) is the sequence, as a number.
impl log::kv::ToValue for Position {
    fn to_value(&self) -> log::kv::Value<'_> {
        log::kv::Value::from(self.sequence)
    }
}

/// A valid order on its way to the table.
pub struct NewOrder<'a> {
    pub uid: &'a str,
    pub json: &'a str,
    pub stream_sequence: Option<Position>,
}

/// A message that will not be stored, with why.
#[derive(Clone, Copy)]
pub struct DeadLetter<'a> {
    pub kind: RejectionKind,
    pub reason: &'a str,
    pub stream_sequence: Option<Position>,
    /// What is kept of the message: empty for a reduced dead letter.
    pub payload: &'a [u8],
    /// The message's full length, whatever `payload` keeps of it.
    pub payload_length: usize,
}

/// What became of each `NewOrder` of a batch, in the same order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Stored,
    /// The same order was already stored: a redelivery or a republish.
    Duplicate,
    /// A different body under a stored `order_uid`: dead-lettered.
    Conflict,
}

/// The writer's connection with its statements prepared once.
pub struct Writer {
    client: Client,
    /// `insert_orders_sql(n)`, prepared once per batch size seen.
    insert_orders: HashMap<usize, Statement>,
    find_conflicts: Statement,
    insert_dead_letters: Statement,
}

impl Writer {
    pub fn connect(database: &Database) -> Result<Writer, postgres::Error> {
        let mut client = database.connect("order-service-writer")?;
        let find_conflicts = client.prepare(
            "SELECT batch.i::int4
             FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS batch(uid, body, i)
             JOIN orders ON orders.order_uid = batch.uid
             WHERE orders.data <> batch.body::jsonb",
        )?;
        let insert_dead_letters = client.prepare(
            // Idempotent: a redelivered message (a lost Term ack, a retried
            // ambiguous COMMIT) finds its dead letter already written.
            "INSERT INTO rejected_messages
                 (kind, reason, stream_sequence, payload_length, payload, published_at)
             SELECT k, r, s, l, p, 'epoch'::timestamptz + t * interval '1 microsecond'
             FROM unnest($1::text[], $2::text[], $3::int8[], $4::int4[], $5::bytea[], $6::int8[])
                 AS letter(k, r, s, l, p, t)
             ON CONFLICT DO NOTHING",
        )?;
        Ok(Writer {
            client,
            insert_orders: HashMap::new(),
            find_conflicts,
            insert_dead_letters,
        })
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Stores a batch in one transaction: the orders (`ON CONFLICT DO
    /// NOTHING`), then a dead letter for every conflicting duplicate and for
    /// every message in `dead`. Returns each order's outcome.
    pub fn write_batch(
        &mut self,
        orders: &[NewOrder<'_>],
        dead: &[DeadLetter<'_>],
    ) -> Result<Vec<Outcome>, StoreError> {
        self.try_write_batch(orders, dead).map_err(|err| {
            if err.code().is_some() && !is_transient(&err) {
                StoreError::Data(err)
            } else {
                StoreError::Transient(err)
            }
        })
    }

    fn try_write_batch(
        &mut self,
        orders: &[NewOrder<'_>],
        dead: &[DeadLetter<'_>],
    ) -> Result<Vec<Outcome>, postgres::Error> {
        let mut tx = self.client.transaction()?;
        let mut outcomes = vec![Outcome::Duplicate; orders.len()];
        if !orders.is_empty() {
            let insert = match self.insert_orders.get(&orders.len()) {
                Some(statement) => statement.clone(),
                None => {
                    let statement = tx.prepare(&insert_orders_sql(orders.len()))?;
                    self.insert_orders.insert(orders.len(), statement.clone());
                    statement
                }
            };
            let params: Vec<&(dyn ToSql + Sync)> = orders
                .iter()
                .flat_map(|o| [&o.uid as &(dyn ToSql + Sync), &o.json])
                .collect();
            let inserted: HashSet<String> = tx
                .query(&insert, &params)?
                .iter()
                .map(|row| row.get(0))
                .collect();
            // A uid inserted by this batch counts as stored once: a second copy
            // in the same batch is a duplicate (or a conflict, found below).
            let mut first_seen = HashSet::new();
            for (outcome, order) in outcomes.iter_mut().zip(orders) {
                if inserted.contains(order.uid) && first_seen.insert(order.uid) {
                    *outcome = Outcome::Stored;
                }
            }
            let unresolved: Vec<usize> = (0..orders.len())
                .filter(|&i| outcomes[i] == Outcome::Duplicate)
                .collect();
            if !unresolved.is_empty() {
                let uids: Vec<&str> = unresolved.iter().map(|&i| orders[i].uid).collect();
                let bodies: Vec<&str> = unresolved.iter().map(|&i| orders[i].json).collect();
                for row in tx.query(&self.find_conflicts, &[&uids, &bodies])? {
                    let position: i32 = row.get(0);
                    outcomes[unresolved[position as usize - 1]] = Outcome::Conflict;
                }
            }
        }
        let conflict_reasons: Vec<(usize, String)> = outcomes
            .iter()
            .enumerate()
            .filter(|(_, outcome)| **outcome == Outcome::Conflict)
            .map(|(i, _)| {
                let reason = format!(
                    "order_uid {} is already stored with a different body",
                    orders[i].uid
                );
                (i, reason)
            })
            .collect();
        let conflicts = conflict_reasons.iter().map(|(i, reason)| DeadLetter {
            kind: RejectionKind::ConflictingDuplicate,
            reason,
            stream_sequence: orders[*i].stream_sequence,
            payload: orders[*i].json.as_bytes(),
            payload_length: orders[*i].json.len(),
        });
        let letters: Vec<DeadLetter<'_>> = dead.iter().copied().chain(conflicts).collect();
        if !letters.is_empty() {
            let kinds: Vec<&str> = letters.iter().map(|d| d.kind.label()).collect();
            let reasons: Vec<&str> = letters.iter().map(|d| d.reason).collect();
            let sequences: Vec<Option<i64>> = letters
                .iter()
                .map(|d| d.stream_sequence.map(|s| s.sequence as i64))
                .collect();
            let published: Vec<Option<i64>> = letters
                .iter()
                .map(|d| d.stream_sequence.map(|s| s.published_us))
                .collect();
            let lengths: Vec<i32> = letters
                .iter()
                .map(|d| i32::try_from(d.payload_length).unwrap_or(i32::MAX))
                .collect();
            let payloads: Vec<&[u8]> = letters
                .iter()
                .map(|d| &d.payload[..d.payload.len().min(DEAD_LETTER_PAYLOAD_CAP)])
                .collect();
            tx.execute(
                &self.insert_dead_letters,
                &[
                    &kinds, &reasons, &sequences, &lengths, &payloads, &published,
                ],
            )?;
        }
        tx.commit()?;
        Ok(outcomes)
    }
}

/// A multi-row `INSERT` of `rows` orders (parameters: uid, text, uid, text,
/// ...): more rows per second than an `unnest` of two arrays (CRATES.md
/// has the measurement).
fn insert_orders_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|i| {
            format!(
                "(${0}, ${1}::text::jsonb, ${1}::text)",
                2 * i + 1,
                2 * i + 2
            )
        })
        .collect();
    format!(
        "INSERT INTO orders (order_uid, data, body) VALUES {}
         ON CONFLICT (order_uid) DO NOTHING
         RETURNING order_uid",
        values.join(", ")
    )
}

/// Streams every stored order, in chunks of `chunk` rows, so a start-up load
/// never holds the whole table in one `Vec`. Physical order: the cache sorts.
///
/// One query whose rows are read as they arrive, not a portal fetched chunk
/// by chunk: with a portal the server waits idle while each chunk is turned
/// into orders, and the client waits while the server produces the next one.
/// Here the socket's buffers are all that separates the two.
pub fn load_all(
    client: &mut Client,
    chunk: usize,
    mut each: impl FnMut(Vec<StoredOrder>),
) -> Result<(), postgres::Error> {
    let query = format!("SELECT {STORED_ORDER} FROM orders");
    let mut rows = client.query_raw(&query, std::iter::empty::<&(dyn ToSql + Sync)>())?;
    let mut orders = Vec::with_capacity(chunk);
    while let Some(row) = rows.next()? {
        orders.push(stored_order(&row));
        if orders.len() == chunk {
            each(std::mem::replace(&mut orders, Vec::with_capacity(chunk)));
        }
    }
    if !orders.is_empty() {
        each(orders);
    }
    Ok(())
}

/// The stored orders among `uids`.
pub fn load_by_uids<T: ToSql + Sync>(
    client: &mut Client,
    uids: &[T],
) -> Result<Vec<StoredOrder>, postgres::Error> {
    let statement = prepare_load_by_uids(client)?;
    load_prepared_by_uids(client, &statement, uids)
}

/// The statement of `load_by_uids`, for a connection that looks orders up
/// often (a loader) to prepare once: a lookup is then one round trip (bind
/// and execute) instead of two (parse and describe first), and PostgreSQL
/// plans it once.
pub fn prepare_load_by_uids(client: &mut Client) -> Result<Statement, postgres::Error> {
    client.prepare(&format!(
        "SELECT {STORED_ORDER} FROM orders WHERE order_uid = ANY($1)"
    ))
}

/// `load_by_uids` with `statement` from `prepare_load_by_uids` on `client`.
pub fn load_prepared_by_uids<T: ToSql + Sync>(
    client: &mut Client,
    statement: &Statement,
    uids: &[T],
) -> Result<Vec<StoredOrder>, postgres::Error> {
    let rows = client.query(statement, &[&uids])?;
    Ok(rows.iter().map(stored_order).collect())
}

/// Up to `limit` order ids older than `before` (all when `None`), newest
/// first, and the cursor of the next page (`None` on the last). Keyset by
/// id: one index range scan, however deep the page.
pub fn order_ids_before(
    client: &mut Client,
    before: Option<i64>,
    limit: usize,
) -> Result<(Vec<Arc<str>>, Option<i64>), postgres::Error> {
    let fetch = limit as i64 + 1;
    let rows = client.query(
        "SELECT id, order_uid FROM orders WHERE id < $1 ORDER BY id DESC LIMIT $2",
        &[&before.unwrap_or(i64::MAX), &fetch],
    )?;
    let mut page: Vec<(i64, Arc<str>)> = rows
        .iter()
        .map(|row| (row.get(0), row.get::<_, &str>(1).into()))
        .collect();
    let more = page.len() > limit;
    page.truncate(limit);
    let next_cursor = more.then(|| page.last().map(|(id, _)| *id)).flatten();
    Ok((page.into_iter().map(|(_, uid)| uid).collect(), next_cursor))
}

/// A random stored uid in O(log n): a random point between the smallest
/// and the largest id (both read from the id index), then the first order
/// at or after it. Ids have gaps (a conflict or a rolled-back batch burns
/// identity values), so an order after a gap is picked a little more often
/// than one in a run: random enough for "show me an order", never a scan.
pub fn random_order(client: &mut Client) -> Result<Option<Arc<str>>, postgres::Error> {
    let row = client.query_one("SELECT min(id), max(id) FROM orders", &[])?;
    let (Some(low), Some(high)) = (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1))
    else {
        return Ok(None);
    };
    let at = rand::random_range(low..=high);
    let row = client.query_opt(
        "SELECT order_uid FROM orders WHERE id >= $1 ORDER BY id LIMIT 1",
        &[&at],
    )?;
    Ok(row.map(|row| row.get::<_, &str>(0).into()))
}

/// Streams stored orders newest first, in chunks of `chunk` rows, through a
/// portal, until `each` returns false: the bounded cache's start-up load,
/// which reads as many orders as its budget holds, not the table.
pub fn load_newest(
    client: &mut Client,
    chunk: i32,
    mut each: impl FnMut(Vec<StoredOrder>) -> bool,
) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    let portal = tx.bind(
        &format!("SELECT {STORED_ORDER} FROM orders ORDER BY id DESC"),
        &[],
    )?;
    loop {
        let rows = tx.query_portal(&portal, chunk)?;
        if rows.is_empty() || !each(rows.iter().map(stored_order).collect()) {
            break;
        }
    }
    tx.commit()
}

/// One `rejected_messages` row, its payload cut to what is shown.
pub struct RejectionRow {
    pub id: i64,
    /// RFC 3339 in UTC with microseconds, formatted by PostgreSQL.
    pub received_at: String,
    pub kind: String,
    pub reason: String,
    pub stream_sequence: Option<i64>,
    pub payload_length: i32,
    pub payload: Vec<u8>,
}

/// Up to `limit` dead letters older than `before`, newest first, of `kind`
/// when given, with at most `shown` payload bytes each; and the next
/// cursor. Keyset by id, on the primary key or on (kind, id).
pub fn rejections_before(
    client: &mut Client,
    before: Option<i64>,
    limit: usize,
    kind: Option<&str>,
    shown: usize,
) -> Result<(Vec<RejectionRow>, Option<i64>), postgres::Error> {
    let fetch = limit as i64 + 1;
    let before = before.unwrap_or(i64::MAX);
    let shown = i32::try_from(shown).unwrap_or(i32::MAX);
    // Two statements rather than `kind = $n OR $n IS NULL`, which a generic
    // plan cannot turn into an index range.
    const COLUMNS: &str = "id, to_char(received_at AT TIME ZONE 'UTC', \
        'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), kind, reason, stream_sequence, payload_length, \
        substring(payload FROM 1 FOR $3)";
    let rows = match kind {
        Some(kind) => client.query(
            &format!(
                "SELECT {COLUMNS} FROM rejected_messages WHERE kind = $4 AND id < $1 \
                 ORDER BY id DESC LIMIT $2"
            ),
            &[&before, &fetch, &shown, &kind],
        )?,
        None => client.query(
            &format!(
                "SELECT {COLUMNS} FROM rejected_messages WHERE id < $1 \
                 ORDER BY id DESC LIMIT $2"
            ),
            &[&before, &fetch, &shown],
        )?,
    };
    let mut page: Vec<RejectionRow> = rows
        .iter()
        .map(|row| RejectionRow {
            id: row.get(0),
            received_at: row.get(1),
            kind: row.get(2),
            reason: row.get(3),
            stream_sequence: row.get(4),
            payload_length: row.get(5),
            payload: row.get(6),
        })
        .collect();
    let more = page.len() > limit;
    page.truncate(limit);
    let next_cursor = more.then(|| page.last().map(|row| row.id)).flatten();
    Ok((page, next_cursor))
}

/// The planner's estimate of the table's rows (`pg_class.reltuples`, kept
/// by autovacuum and ANALYZE): free to read, unlike `count(*)`, and only a
/// capacity hint. 0 when the table was never analyzed.
pub fn estimate_orders(client: &mut Client) -> Result<usize, postgres::Error> {
    let estimate: f32 = client
        .query_one(
            "SELECT reltuples FROM pg_class WHERE oid = 'orders'::regclass",
            &[],
        )?
        .get(0);
    Ok(estimate.max(0.0) as usize)
}

pub fn count_orders(client: &mut Client) -> Result<i64, postgres::Error> {
    Ok(client.query_one("SELECT count(*) FROM orders", &[])?.get(0))
}

/// Streams every stored uid in chunks, through a portal.
pub fn for_each_uid_chunk(
    client: &mut Client,
    chunk: i32,
    mut each: impl FnMut(Vec<String>),
) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    let portal = tx.bind("SELECT order_uid FROM orders", &[])?;
    loop {
        let rows = tx.query_portal(&portal, chunk)?;
        if rows.is_empty() {
            break;
        }
        each(rows.iter().map(|row| row.get(0)).collect());
    }
    tx.commit()
}

/// The columns `stored_order` reads: the published text, or for rows stored
/// before migration 0003, PostgreSQL's text of the jsonb.
const STORED_ORDER: &str = "id, order_uid, coalesce(body, data::text)";

fn stored_order(row: &postgres::Row) -> StoredOrder {
    StoredOrder {
        id: row.get(0),
        uid: row.get::<_, &str>(1).into(),
        body: row.get::<_, SharedText>(2).0,
    }
}

/// A `text` column read straight from the row buffer into the `Arc` the
/// cache keeps: one copy per body instead of two (through a `String`). The
/// start-up load of a million orders spends its client time here.
///
/// The bytes are not checked for UTF-8 again (the check showed in profiles
/// of the start-up load): the cache keeps bytes, never a `str`, and
/// PostgreSQL sends `text` in the client encoding, which the driver sets to
/// UTF8; `body` is only ever written from a Rust `&str` besides.
struct SharedText(Arc<[u8]>);

impl<'a> FromSql<'a> for SharedText {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(SharedText(Arc::from(raw)))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TEXT
    }
}
