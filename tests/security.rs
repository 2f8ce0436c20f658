//! User story: "the service runs against a PostgreSQL and a NATS that demand
//! TLS and credentials, and a wrong setting stops it at once with one clear
//! line". Private servers only (a PostgreSQL with ssl=on and a CA made here by
//! the openssl CLI; nats-server with user/password or TLS); no credential in
//! a log line, in /readyz or in --help.

pub mod common;

use common::*;
use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const PG_SECRET: &str = "pg-Secret-7731";
const NATS_SECRET: &str = "nats-Secret-4417";
/// A refused setting must end start-up well before STARTUP_TIMEOUT (30 s).
const AT_ONCE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Certificates, made with the openssl CLI
// ---------------------------------------------------------------------------

struct Certs {
    dir: PathBuf,
}

impl Certs {
    /// A CA, a server certificate it signed for localhost and 127.0.0.1, and
    /// a second CA that signed nothing here.
    fn make() -> Certs {
        let dir = target_tmp().join(unique("certs"));
        fs::create_dir_all(&dir).unwrap();
        let openssl = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("run openssl");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        for ca in ["ca", "other-ca"] {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
                "-days",
                "2",
                "-subj",
                &format!("/CN=test {ca}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
        }
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        Certs { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

// ---------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------

/// A private PostgreSQL with ssl=on, where role `app` (password PG_SECRET)
/// may connect over TCP only with TLS; `postgres` keeps trust, for the
/// harness.
fn tls_postgres(certs: &Certs) -> PrivatePostgres {
    let pg = PrivatePostgres::start();
    let data = pg.dir.join("data");
    for name in ["server.crt", "server.key"] {
        fs::copy(certs.dir.join(name), data.join(name)).unwrap();
    }
    fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\n\
         hostnossl all app 127.0.0.1/32 reject\n\
         hostssl all app 127.0.0.1/32 scram-sha-256\n\
         host all all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    if running_as_root() {
        let status = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(data.join("server.crt"))
            .arg(data.join("server.key"))
            .arg(data.join("pg_hba.conf"))
            .status()
            .unwrap();
        assert!(status.success());
    }
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(data.join("server.key"), fs::Permissions::from_mode(0o600)).unwrap();
    let mut admin = pg_connect(&pg.admin_url);
    // One statement per call: ALTER SYSTEM refuses a transaction block.
    for statement in [
        "ALTER SYSTEM SET ssl = on".to_owned(),
        "ALTER SYSTEM SET ssl_cert_file = 'server.crt'".to_owned(),
        "ALTER SYSTEM SET ssl_key_file = 'server.key'".to_owned(),
        format!("CREATE ROLE app LOGIN PASSWORD '{PG_SECRET}'"),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        admin.batch_execute(&statement).unwrap();
    }
    wait_until(Duration::from_secs(10), "ssl = on after reload", || {
        let mut client = pg_connect(&pg.admin_url);
        let row = client.query_one("SHOW ssl", &[]).unwrap();
        row.get::<_, String>(0) == "on"
    });
    pg
}

/// A database on `pg` owned by `app`.
fn app_database(pg: &PrivatePostgres) -> TestDb {
    let db = TestDb::create_on(&pg.admin_url);
    pg_connect(&pg.admin_url)
        .batch_execute(&format!("ALTER DATABASE {} OWNER TO app", db.name))
        .unwrap();
    db
}

/// A `nats-server -js` from a configuration file (`extra` is added to it),
/// on a free port. `Drop` kills it.
struct ConfiguredNats {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl ConfiguredNats {
    fn start(extra: &str) -> ConfiguredNats {
        let dir = target_tmp().join(unique("nats-conf"));
        fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let config = dir.join("nats.conf");
        fs::write(
            &config,
            format!(
                "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: \"{}\" }}\n{extra}\n",
                dir.join("store").display()
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.join("server.log")).unwrap();
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn nats-server");
        let mut server = ConfiguredNats { port, dir, child };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("nats-server exited ({status}): {}", server.log());
            }
            assert!(
                Instant::now() < deadline,
                "nats-server not listening: {}",
                server.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
        // JetStream is enabled before the client port opens; a moment more
        // for its account to be ready.
        thread::sleep(Duration::from_millis(300));
        server
    }

    fn log(&self) -> String {
        tail_of(&self.dir.join("server.log"), 20)
    }
}

impl Drop for ConfiguredNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// Runs that must fail, and pusher
// ---------------------------------------------------------------------------

/// Runs the service with exactly `env` (and a free HTTP port), expecting it
/// to exit on its own within AT_ONCE. Returns its stderr.
fn service_fails(env: &[(&str, &str)]) -> String {
    let started = Instant::now();
    let mut command = Command::new(env!("CARGO_BIN_EXE_order-service"));
    command
        .env_clear()
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("STARTUP_TIMEOUT", "30")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn order-service");
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            assert!(!status.success(), "the service did not fail:\n{stderr}");
            assert!(output.stdout.is_empty(), "stdout: {:?}", output.stdout);
            assert_one_clear_line(&stderr, "order-service: ", started.elapsed());
            return stderr;
        }
        if started.elapsed() > AT_ONCE {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "the service still ran after {AT_ONCE:?}:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Exactly one line says why start-up ended, and nothing panicked.
fn assert_one_clear_line(stderr: &str, prefix: &str, took: Duration) {
    let fatal: Vec<&str> = stderr.lines().filter(|l| l.starts_with(prefix)).collect();
    assert_eq!(fatal.len(), 1, "want one `{prefix}` line:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(took < AT_ONCE, "took {took:?}:\n{stderr}");
    eprintln!("[fails in {:.1} s] {}", took.as_secs_f64(), fatal[0]);
}

fn assert_no_secret(text: &str, secrets: &[&str], what: &str) {
    for secret in secrets {
        assert!(!text.contains(secret), "{what} shows a credential:\n{text}");
    }
}

fn pusher_path() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_order-service")).with_file_name("pusher");
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`; make test does)",
        path.display()
    );
    path
}

/// Runs pusher with exactly `env`; returns (success, stdout, stderr).
fn pusher(env: &[(&str, &str)], args: &[&str]) -> (bool, String, String) {
    let started = Instant::now();
    let output = Command::new(pusher_path())
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run pusher");
    assert!(started.elapsed() < Duration::from_secs(60));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn write_secret(dir: &Path, name: &str, value: &str) -> String {
    let path = dir.join(name);
    let mut file = fs::File::create(&path).unwrap();
    writeln!(file, "{value}").unwrap();
    path.display().to_string()
}

// ---------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------

#[test]
fn postgres_verify_full_with_the_right_ca_stores_and_serves() {
    let certs = Certs::make();
    let pg = tls_postgres(&certs);
    let db = app_database(&pg);
    let names = NatsNames::unique();
    let _guard = names.guard(SHARED_NATS);
    let password_file = write_secret(&certs.dir, "db-password", PG_SECRET);
    let url = format!(
        "postgres://app@127.0.0.1:{}/{}?sslmode=verify-full",
        pg.port, db.name
    );
    let cfg = ServiceConfig::new(&db, SHARED_NATS, &names)
        .env("DATABASE_URL", &url)
        .env("DATABASE_PASSWORD_FILE", &password_file)
        .env("DATABASE_CA_FILE", &certs.path("ca.crt"));
    let service = Service::start_ready(&cfg);

    let orders = many_orders("tls", 20);
    Publisher::connect(SHARED_NATS).publish_orders(&names.subject, &orders);
    wait_until(Duration::from_secs(30), "20 orders stored", || {
        db.order_count() == 20
    });
    for (uid, _) in &orders {
        assert_eq!(service.order_status(uid), 200, "{uid}");
    }
    // Every connection of the service is encrypted.
    let encrypted = db.query_i64(
        "SELECT count(*) FILTER (WHERE s.ssl) - count(*) FILTER (WHERE NOT s.ssl) \
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.usename = 'app'",
    );
    assert!(encrypted >= 2, "encrypted connections: {encrypted}");
    let (_, readyz) = service.get("/readyz");
    assert_no_secret(&readyz, &[PG_SECRET], "/readyz");
    assert_no_secret(&service.log(), &[PG_SECRET], "the log");

    // The password in the URL works the same and is not shown either.
    let url = format!(
        "postgres://app:{PG_SECRET}@localhost:{}/{}?sslmode=verify-full&sslrootcert={}",
        pg.port,
        db.name,
        certs.path("ca.crt")
    );
    let service = Service::start_ready(
        &ServiceConfig::new(&db, SHARED_NATS, &names).env("DATABASE_URL", &url),
    );
    assert_eq!(service.order_status(&orders[0].0), 200);
    assert_no_secret(&service.log(), &[PG_SECRET], "the log");
    drop(service);

    // verify-ca checks the chain and not the name; prefer takes TLS when
    // offered and checks nothing (libpq's meanings).
    for (host, query) in [
        ("host=db.invalid hostaddr=127.0.0.1", "sslmode=verify-ca"),
        ("host=127.0.0.1", "sslmode=prefer"),
    ] {
        let url = format!(
            "{host} port={} dbname={} user=app password={PG_SECRET} {query}",
            pg.port, db.name
        );
        let cfg = ServiceConfig::new(&db, SHARED_NATS, &names)
            .env("DATABASE_URL", &url)
            .env("DATABASE_CA_FILE", &certs.path("ca.crt"));
        let cfg = if query.contains("prefer") {
            ServiceConfig::new(&db, SHARED_NATS, &names).env("DATABASE_URL", &url)
        } else {
            cfg
        };
        let service = Service::start_ready(&cfg);
        assert_eq!(service.order_status(&orders[1].0), 200, "{query}");
    }
}

#[test]
fn postgres_wrong_ca_wrong_password_or_no_tls_fail_at_once() {
    let certs = Certs::make();
    let pg = tls_postgres(&certs);
    let db = app_database(&pg);
    let at = format!("127.0.0.1:{}/{}", pg.port, db.name);
    let url = |password: &str, query: &str| {
        format!(
            "postgres://app:{password}@127.0.0.1:{}/{}{query}",
            pg.port, db.name
        )
    };

    // The service fails, naming the server and `why`, and never `secret`.
    let fails = |env: &[(&str, &str)], why: &str, secret: &str| {
        let stderr = service_fails(env);
        assert!(stderr.contains(&at) && stderr.contains(why), "{stderr}");
        assert_no_secret(&stderr, &[secret], "stderr");
    };
    fails(
        &[
            ("DATABASE_URL", &url(PG_SECRET, "?sslmode=verify-full")),
            ("DATABASE_CA_FILE", &certs.path("other-ca.crt")),
        ],
        "not signed by a trusted CA",
        PG_SECRET,
    );
    fails(
        &[
            (
                "DATABASE_URL",
                &url("not-the-password", "?sslmode=verify-full"),
            ),
            ("DATABASE_CA_FILE", &certs.path("ca.crt")),
        ],
        "password authentication failed",
        "not-the-password",
    );
    // The server demands TLS and the URL does not ask for it.
    fails(
        &[("DATABASE_URL", &url(PG_SECRET, ""))],
        "requires TLS",
        PG_SECRET,
    );

    // The certificate names localhost and 127.0.0.1, not this name.
    let not_named = service_fails(&[
        (
            "DATABASE_URL",
            &format!(
                "host=127.0.0.1 hostaddr=127.0.0.1 port={} dbname={} user=app password={PG_SECRET} sslmode=verify-full",
                pg.port, db.name
            )
            .replace("host=127.0.0.1 ", "host=db.invalid "),
        ),
        ("DATABASE_CA_FILE", &certs.path("ca.crt")),
    ]);
    assert!(not_named.contains("does not name the host"), "{not_named}");
    assert_no_secret(&not_named, &[PG_SECRET], "stderr");
}

#[test]
fn postgres_require_against_a_server_without_tls_fails_at_once() {
    let pg = PrivatePostgres::start();
    let db = TestDb::create_on(&pg.admin_url);
    let stderr = service_fails(&[("DATABASE_URL", &format!("{}?sslmode=require", db.url))]);
    assert!(
        stderr.contains(&format!("127.0.0.1:{}/{}", pg.port, db.name))
            && stderr.contains("does not offer TLS"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------
// NATS
// ---------------------------------------------------------------------------

#[test]
fn nats_with_user_and_password() {
    let nats = ConfiguredNats::start(&format!(
        "authorization {{ user: orders, password: \"{NATS_SECRET}\" }}"
    ));
    let db = TestDb::create();
    let names = NatsNames::unique();
    let good = format!("nats://orders:{NATS_SECRET}@127.0.0.1:{}", nats.port);
    let service = Service::start_ready(&ServiceConfig::new(&db, &good, &names));

    // pusher with the user in the URL and the password in a file.
    let password_file = write_secret(&nats.dir, "nats-password", NATS_SECRET);
    let pusher_env = |url: &str| {
        vec![
            ("NATS_URL", url.to_owned()),
            ("NATS_STREAM", names.stream.clone()),
            ("NATS_SUBJECT", names.subject.clone()),
        ]
    };
    let user_only = format!("nats://orders@127.0.0.1:{}", nats.port);
    let mut env = pusher_env(&user_only);
    env.push(("NATS_PASSWORD_FILE", password_file.clone()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (ok, stdout, stderr) = pusher(&env, &["--count", "20", "--seed", "16"]);
    assert!(ok, "pusher failed:\n{stdout}\n{stderr}");
    assert_no_secret(
        &format!("{stdout}{stderr}"),
        &[NATS_SECRET],
        "pusher's output",
    );
    wait_until(Duration::from_secs(30), "20 orders stored", || {
        db.order_count() == 20
    });
    let (_, readyz) = service.get("/readyz");
    assert_no_secret(&readyz, &[NATS_SECRET], "/readyz");
    assert_no_secret(&service.log(), &[NATS_SECRET], "the log");

    // A wrong password, and no credentials at all: at once, one line.
    let wrong = format!("nats://orders:wrong-{NATS_SECRET}@127.0.0.1:{}", nats.port);
    let base = [
        ("DATABASE_URL", db.url.as_str()),
        ("NATS_STREAM", names.stream.as_str()),
        ("NATS_SUBJECT", names.subject.as_str()),
        ("NATS_CONSUMER", names.consumer.as_str()),
    ];
    let with = |url: &str| {
        let mut env = base.to_vec();
        env.push(("NATS_URL", url));
        service_fails(&env)
    };
    let refused = with(&wrong);
    let at = format!("nats://***@127.0.0.1:{}", nats.port);
    assert!(
        refused.contains(&at) && refused.contains("refused the credentials"),
        "{refused}"
    );
    assert_no_secret(&refused, &[NATS_SECRET], "stderr");
    let anonymous = with(&format!("nats://127.0.0.1:{}", nats.port));
    assert!(anonymous.contains("requires credentials"), "{anonymous}");
    // A tls:// URL for a server without TLS.
    let tls = with(&format!(
        "tls://orders:{NATS_SECRET}@127.0.0.1:{}",
        nats.port
    ));
    assert!(tls.contains("127.0.0.1") && tls.contains("TLS"), "{tls}");
    assert_no_secret(&tls, &[NATS_SECRET], "stderr");

    let env = pusher_env(&wrong);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let started = Instant::now();
    let (ok, stdout, stderr) = pusher(&env, &["--count", "1"]);
    assert!(
        !ok,
        "pusher succeeded with a wrong password:\n{stdout}{stderr}"
    );
    assert_one_clear_line(&stderr, "pusher: ", started.elapsed());
    assert!(stderr.contains("refused the credentials"), "{stderr}");
    assert_no_secret(&stderr, &[NATS_SECRET], "pusher's stderr");
}

#[test]
fn nats_with_tls() {
    let certs = Certs::make();
    let nats = ConfiguredNats::start(&format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\" }}",
        certs.path("server.crt"),
        certs.path("server.key")
    ));
    let db = TestDb::create();
    let names = NatsNames::unique();
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let ca = certs.path("ca.crt");
    let service =
        Service::start_ready(&ServiceConfig::new(&db, &url, &names).env("NATS_CA_FILE", &ca));
    let env = [
        ("NATS_URL", url.as_str()),
        ("NATS_CA_FILE", ca.as_str()),
        ("NATS_STREAM", names.stream.as_str()),
        ("NATS_SUBJECT", names.subject.as_str()),
    ];
    let (ok, stdout, stderr) = pusher(&env, &["--count", "20", "--seed", "17"]);
    assert!(ok, "pusher failed:\n{stdout}\n{stderr}");
    wait_until(Duration::from_secs(30), "20 orders stored", || {
        db.order_count() == 20
    });
    assert_eq!(service.get("/readyz").0, 200);

    let base = [
        ("DATABASE_URL", db.url.as_str()),
        ("NATS_STREAM", names.stream.as_str()),
        ("NATS_SUBJECT", names.subject.as_str()),
        ("NATS_CONSUMER", names.consumer.as_str()),
    ];
    let plain = format!("nats://127.0.0.1:{}", nats.port);
    // The server demands TLS; nothing here says which CA to trust.
    let mut no_ca = base.to_vec();
    no_ca.push(("NATS_URL", &plain));
    let stderr = service_fails(&no_ca);
    assert!(
        stderr.contains(&plain)
            && stderr.contains("requires TLS")
            && stderr.contains("NATS_CA_FILE"),
        "{stderr}"
    );
    let other_ca = certs.path("other-ca.crt");
    let mut wrong_ca = base.to_vec();
    wrong_ca.extend([
        ("NATS_URL", url.as_str()),
        ("NATS_CA_FILE", other_ca.as_str()),
    ]);
    let stderr = service_fails(&wrong_ca);
    assert!(
        stderr.contains("not signed by the CA in NATS_CA_FILE"),
        "{stderr}"
    );

    let started = Instant::now();
    let (ok, _, stderr) = pusher(
        &env[..1]
            .iter()
            .chain(&env[2..])
            .copied()
            .collect::<Vec<_>>(),
        &["--count", "1"],
    );
    assert!(!ok, "pusher succeeded without the CA:\n{stderr}");
    assert_one_clear_line(&stderr, "pusher: ", started.elapsed());
    assert!(stderr.contains("NATS_CA_FILE"), "{stderr}");
}

// ---------------------------------------------------------------------------
// --help
// ---------------------------------------------------------------------------

#[test]
fn help_shows_no_credential() {
    for binary in [
        PathBuf::from(env!("CARGO_BIN_EXE_order-service")),
        pusher_path(),
    ] {
        let output = Command::new(&binary)
            .arg("--help")
            .env(
                "DATABASE_URL",
                format!("postgres://app:{PG_SECRET}@db/orders"),
            )
            .env("NATS_URL", format!("nats://orders:{NATS_SECRET}@nats:4222"))
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && help.contains("NATS_URL"),
            "{help}"
        );
        assert_no_secret(&help, &[PG_SECRET, NATS_SECRET], "--help");
        if binary.ends_with("order-service") {
            for name in ["DATABASE_CA_FILE", "NATS_CREDS_FILE", "NATS_CA_FILE"] {
                assert!(help.contains(name), "--help lacks {name}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// A server that is merely down
// ---------------------------------------------------------------------------

#[test]
fn a_server_that_is_down_is_still_waited_for() {
    let nowhere = free_port();
    let started = Instant::now();
    let stderr = service_fails(&[
        (
            "DATABASE_URL",
            &format!("postgres://app:{PG_SECRET}@127.0.0.1:{nowhere}/orders?sslmode=verify-full"),
        ),
        ("STARTUP_TIMEOUT", "2"),
    ]);
    assert!(started.elapsed() >= Duration::from_secs(2), "{stderr}");
    assert!(stderr.contains("cannot connect to PostgreSQL"), "{stderr}");
    assert_no_secret(&stderr, &[PG_SECRET], "stderr");

    let db = TestDb::create();
    let started = Instant::now();
    let stderr = service_fails(&[
        ("DATABASE_URL", &db.url),
        (
            "NATS_URL",
            &format!("nats://orders:{NATS_SECRET}@127.0.0.1:{nowhere}"),
        ),
        ("STARTUP_TIMEOUT", "2"),
    ]);
    assert!(started.elapsed() >= Duration::from_secs(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot connect to NATS at nats://***@127.0.0.1:{nowhere}"
        )),
        "{stderr}"
    );
    assert_no_secret(&stderr, &[NATS_SECRET], "stderr");
}

// ---------------------------------------------------------------------------
// A .creds file (JWT + NKey), against nats-server in operator mode
// ---------------------------------------------------------------------------

/// A JWT as nats-server reads it: `claims` signed by `issuer`.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, nats: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let issued = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "jti": unique("jti").to_uppercase(),
        "iat": issued,
        "iss": issuer.public_key(),
        "name": subject,
        "sub": subject,
        "nats": nats,
    });
    let signed = format!("{header}.{}", b64.encode(claims.to_string()));
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64.encode(signature))
}

fn creds_file(path: &Path, jwt: &str, user: &nkeys::KeyPair) {
    fs::write(
        path,
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
}

#[test]
fn nats_with_a_creds_file() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let system = nkeys::KeyPair::new_account();
    let unknown_account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let account_claims = |jetstream: bool| {
        let mut limits = serde_json::json!({"subs": -1, "data": -1, "payload": -1,
            "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1});
        if jetstream {
            for key in ["mem_storage", "disk_storage", "streams", "consumer"] {
                limits[key] = serde_json::json!(-1);
            }
        }
        serde_json::json!({"limits": limits, "type": "account", "version": 2})
    };
    let account_jwt = nats_jwt(&operator, &account.public_key(), account_claims(true));
    let system_jwt = nats_jwt(&operator, &system.public_key(), account_claims(false));
    let user_claims = serde_json::json!({"pub": {}, "sub": {}, "subs": -1, "data": -1,
        "payload": -1, "type": "user", "version": 2});
    let nats = ConfiguredNats::start(&format!(
        "operator: \"{operator_jwt}\"\nsystem_account: {}\nresolver: MEMORY\n\
         resolver_preload: {{\n  {}: \"{account_jwt}\"\n  {}: \"{system_jwt}\"\n}}",
        system.public_key(),
        account.public_key(),
        system.public_key(),
    ));
    let good = nats.dir.join("good.creds");
    creds_file(
        &good,
        &nats_jwt(&account, &user.public_key(), user_claims.clone()),
        &user,
    );
    let bad = nats.dir.join("bad.creds");
    creds_file(
        &bad,
        &nats_jwt(&unknown_account, &user.public_key(), user_claims),
        &user,
    );
    let (good, bad) = (good.display().to_string(), bad.display().to_string());

    let db = TestDb::create();
    let names = NatsNames::unique();
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let service =
        Service::start_ready(&ServiceConfig::new(&db, &url, &names).env("NATS_CREDS_FILE", &good));
    let env = [
        ("NATS_URL", url.as_str()),
        ("NATS_CREDS_FILE", good.as_str()),
        ("NATS_STREAM", names.stream.as_str()),
        ("NATS_SUBJECT", names.subject.as_str()),
    ];
    let (ok, stdout, stderr) = pusher(&env, &["--count", "20", "--seed", "18"]);
    assert!(ok, "pusher failed:\n{stdout}\n{stderr}\n{}", nats.log());
    wait_until(Duration::from_secs(30), "20 orders stored", || {
        db.order_count() == 20
    });
    let seed = user.seed().unwrap();
    assert_no_secret(&service.log(), &[&seed], "the log");

    // A user signed by an account the server does not know.
    let stderr = service_fails(&[
        ("DATABASE_URL", &db.url),
        ("NATS_URL", &url),
        ("NATS_CREDS_FILE", &bad),
        ("NATS_STREAM", &names.stream),
        ("NATS_SUBJECT", &names.subject),
        ("NATS_CONSUMER", &names.consumer),
    ]);
    assert!(stderr.contains("refused the credentials"), "{stderr}");
    assert_no_secret(&stderr, &[&seed], "stderr");
}

#[test]
fn nats_with_a_token_file() {
    let nats = ConfiguredNats::start(&format!("authorization {{ token: \"{NATS_SECRET}\" }}"));
    let db = TestDb::create();
    let names = NatsNames::unique();
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let token_file = write_secret(&nats.dir, "token", NATS_SECRET);
    let service = Service::start_ready(
        &ServiceConfig::new(&db, &url, &names).env("NATS_TOKEN_FILE", &token_file),
    );
    assert_eq!(service.get("/readyz").0, 200);
    assert_no_secret(&service.log(), &[NATS_SECRET], "the log");
    let wrong_file = write_secret(&nats.dir, "wrong-token", "not-the-token");
    let stderr = service_fails(&[
        ("DATABASE_URL", &db.url),
        ("NATS_URL", &url),
        ("NATS_TOKEN_FILE", &wrong_file),
        ("NATS_STREAM", &names.stream),
        ("NATS_SUBJECT", &names.subject),
        ("NATS_CONSUMER", &names.consumer),
    ]);
    assert!(stderr.contains("refused the credentials"), "{stderr}");
    assert_no_secret(&stderr, &["not-the-token"], "stderr");
}
