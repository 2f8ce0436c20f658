//! PostgreSQL for tests: a fresh database per test (dropped with FORCE on
//! `Drop`), connections with a timeout, and the queries tests assert with.

use std::time::Duration;

use super::{unique, SHARED_POSTGRES};

/// A fresh database with a random name on some server; dropped (with FORCE)
/// on `Drop`.
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl TestDb {
    /// A fresh database on the shared server.
    pub fn create() -> TestDb {
        TestDb::create_on(SHARED_POSTGRES)
    }

    pub fn create_on(admin_url: &str) -> TestDb {
        let name = unique("t");
        let mut admin = pg_connect(admin_url);
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {admin_url}: {e:?}"));
        TestDb {
            url: with_dbname(admin_url, &name),
            name,
            admin_url: admin_url.to_owned(),
        }
    }

    /// A new connection to this database.
    pub fn client(&self) -> postgres::Client {
        pg_connect(&self.url)
    }

    /// The first column of the first row of `sql`, as i64 (`count(*)` etc.).
    pub fn query_i64(&self, sql: &str) -> i64 {
        let mut client = self.client();
        scalar_i64(&mut client, sql)
    }

    /// Like `query_i64`, but `None` when the query fails (table not created
    /// yet, server down).
    pub fn try_query_i64(&self, sql: &str) -> Option<i64> {
        let mut client = try_pg_connect(&self.url).ok()?;
        let row = client.query_one(sql, &[]).ok()?;
        row.try_get::<_, i64>(0).ok()
    }

    /// `SELECT count(*) FROM orders`, or 0 before the table exists.
    pub fn order_count(&self) -> i64 {
        self.try_query_i64("SELECT count(*) FROM orders")
            .unwrap_or(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Best effort: the server may be a private one that is gone already.
        if let Ok(mut admin) = try_pg_connect(&self.admin_url) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// `admin_url` with its database name replaced by `dbname`.
pub fn with_dbname(admin_url: &str, dbname: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (admin_url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(query) => format!("{host_part}/{dbname}?{query}"),
        None => format!("{host_part}/{dbname}"),
    }
}

pub fn try_pg_connect(url: &str) -> Result<postgres::Client, postgres::Error> {
    let mut config: postgres::Config = url.parse()?;
    config.connect_timeout(Duration::from_secs(5));
    config.application_name("order-service-tests");
    config.connect(postgres::NoTls)
}

pub fn pg_connect(url: &str) -> postgres::Client {
    try_pg_connect(url).unwrap_or_else(|e| panic!("connect to {url}: {e:?}"))
}

pub fn scalar_i64(client: &mut postgres::Client, sql: &str) -> i64 {
    let row = client
        .query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    row.get::<_, i64>(0)
}

/// Counts rows and distinct uids of `uids` in `orders`: (rows of those
/// uids, uids missing).
pub fn stored_of(db: &TestDb, uids: &[String]) -> (i64, usize) {
    let mut client = db.client();
    let rows: i64 = client
        .query_one(
            "SELECT count(*) FROM orders WHERE order_uid = ANY($1)",
            &[&uids],
        )
        .expect("count stored uids")
        .get(0);
    (rows, uids.len() - rows as usize)
}
