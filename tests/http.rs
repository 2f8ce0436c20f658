//! User story: "people and programs read orders over HTTP": the listing with
//! its cursor, a random id for the page's button, the probes, the metrics,
//! the OpenAPI document, the page and its assets with their security
//! headers, and 405 for other methods. One running service per test, on the
//! shared servers.

pub mod common;

use common::*;
use serde_json::Value;
use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn publish_and_wait(w: &World, orders: &[(String, Vec<u8>)]) {
    w.publisher.publish_many(&w.names.subject, orders);
    wait_until(
        Duration::from_secs(20),
        &format!("{} orders cached", orders.len()),
        || {
            w.service
                .metric("order_service_cache_orders", &[])
                .is_some_and(|c| c >= orders.len() as f64)
        },
    );
}

fn uids_of(page: &Value) -> Vec<String> {
    page["orders"]
        .as_array()
        .unwrap_or_else(|| panic!("no orders array in {page}"))
        .iter()
        .map(|v| v.as_str().expect("uid strings").to_owned())
        .collect()
}

fn repo_file(path: &str) -> Vec<u8> {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

#[test]
fn listing_pages_newest_first_with_a_cursor() {
    let w = World::start(&[]);
    let (status, empty) = w.service.get_json("/orders");
    assert_eq!(status, 200);
    assert_eq!(empty["orders"], serde_json::json!([]), "{empty}");
    assert!(empty["next_cursor"].is_null(), "{empty}");

    publish_and_wait(&w, &many_orders("list", 25));
    let mut client = w.db.client();
    let newest_first: Vec<String> = client
        .query("SELECT order_uid FROM orders ORDER BY id DESC", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(newest_first.len(), 25);

    // Default limit (100) takes everything.
    let (status, all) = w.service.get_json("/orders");
    assert_eq!(status, 200, "{all}");
    assert_eq!(uids_of(&all), newest_first);
    assert!(all["next_cursor"].is_null(), "{all}");

    // Pages of 10: 10, 10, 5, then no cursor.
    let mut seen = Vec::new();
    let mut path = String::from("/orders?limit=10");
    let mut sizes = Vec::new();
    loop {
        let (status, page) = w.service.get_json(&path);
        assert_eq!(status, 200, "{path}: {page}");
        let uids = uids_of(&page);
        sizes.push(uids.len());
        seen.extend(uids);
        match &page["next_cursor"] {
            Value::Null => break,
            Value::String(cursor) => path = format!("/orders?limit=10&cursor={cursor}"),
            other => panic!("next_cursor must be a string or null, got {other}"),
        }
        assert!(sizes.len() < 10, "the cursor never ends: {sizes:?}");
    }
    assert_eq!(sizes, vec![10, 10, 5]);
    assert_eq!(seen, newest_first);

    // The largest limit is accepted.
    assert_eq!(w.service.get("/orders?limit=1000").0, 200);
    // Bad parameters get 400 with a JSON error.
    for bad in [
        "/orders?limit=1001",
        "/orders?limit=abc",
        "/orders?limit=-1",
        "/orders?cursor=%21%21not-a-cursor",
    ] {
        let resp = w.service.get_full(bad);
        assert_eq!(resp.status, 400, "{bad}: {}", resp.text());
        assert!(resp.json()["error"].is_string(), "{bad}: {}", resp.text());
    }
}

#[test]
fn random_order_is_a_stored_id() {
    let w = World::start(&[]);
    let (status, body) = w.service.get_json("/random-order");
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "no orders stored yet");

    let orders = many_orders("rnd", 5);
    publish_and_wait(&w, &orders);
    let stored: HashSet<&str> = orders.iter().map(|(u, _)| u.as_str()).collect();
    let mut picked = HashSet::new();
    for _ in 0..40 {
        let (status, body) = w.service.get_json("/random-order");
        assert_eq!(status, 200, "{body}");
        let uid = body["order_uid"]
            .as_str()
            .expect("order_uid string")
            .to_owned();
        assert!(stored.contains(uid.as_str()), "{uid} is not a stored order");
        assert_eq!(w.service.order_status(&uid), 200);
        picked.insert(uid);
    }
    assert!(picked.len() > 1, "40 random picks all gave {picked:?}");
}

#[test]
fn probes_and_metrics() {
    let w = World::start(&[]);
    let (status, health) = w.service.get_json("/healthz");
    assert_eq!(status, 200);
    assert_eq!(health, serde_json::json!({"status": "ok"}));
    let (status, ready) = w.service.get_json("/readyz");
    assert_eq!(status, 200);
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["cache"], "loaded", "{ready}");
    assert_eq!(ready["postgres"], "ok", "{ready}");
    // The consumer reports in after its first pull.
    wait_until(Duration::from_secs(10), "/readyz names NATS ok", || {
        w.service.get_json("/readyz").1["nats"] == "ok"
    });

    publish_and_wait(&w, &many_orders("metrics", 3));
    assert_eq!(w.service.order_status("no-such-order"), 404);

    let resp = w.service.get_full("/metrics");
    assert_eq!(resp.status, 200);
    assert!(
        resp.header("content-type")
            .is_some_and(|v| v.starts_with("text/plain")),
        "{:?}",
        resp.header("content-type")
    );
    let text = resp.text();
    for name in [
        "order_service_messages_received_total",
        "order_service_orders_stored_total",
        "order_service_duplicates_total",
        "order_service_cache_orders",
        "order_service_cache_bytes",
    ] {
        assert!(
            metric_value(&text, name, &[]).is_some(),
            "{name} missing in:\n{text}"
        );
    }
    assert_eq!(
        metric_value(&text, "order_service_cache_orders", &[]),
        Some(3.0)
    );
    assert_eq!(metric_value(&text, "order_service_ready", &[]), Some(1.0));
    for dependency in ["postgres", "nats"] {
        assert_eq!(
            metric_value(
                &text,
                "order_service_dependency_up",
                &[("dependency", dependency)]
            ),
            Some(1.0),
            "{dependency}"
        );
    }
    assert!(
        metric_value(
            &text,
            "order_service_http_requests_total",
            &[("status", "404")]
        )
        .is_some_and(|n| n >= 1.0),
        "no 404 counted in:\n{text}"
    );
    assert!(
        text.contains("# TYPE order_service_messages_received_total counter"),
        "{text}"
    );
}

#[test]
fn page_assets_and_openapi() {
    let w = World::start(&[]);
    let page = w.service.get_full("/");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/html")));
    assert_eq!(page.header("content-security-policy"), Some(CSP));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        page.body,
        repo_file("static/index.html"),
        "GET / is static/index.html"
    );
    assert!(page.text().contains("/assets/app.js"));

    for (path, file, content_type) in [
        ("/assets/app.js", "static/dist/app.js", "javascript"),
        ("/assets/style.css", "static/style.css", "text/css"),
        ("/favicon.svg", "static/favicon.svg", "image/svg+xml"),
    ] {
        let resp = w.service.get_full(path);
        assert_eq!(resp.status, 200, "{path}");
        assert!(
            resp.header("content-type")
                .is_some_and(|v| v.contains(content_type)),
            "{path}: {:?}",
            resp.header("content-type")
        );
        assert_eq!(resp.header("cache-control"), Some("no-cache"), "{path}");
        assert_eq!(
            resp.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(resp.body, repo_file(file), "{path} is {file}");
    }

    let resp = w.service.get_full("/openapi.json");
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .is_some_and(|v| v.starts_with("application/json")));
    let doc = resp.json();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "openapi: {}",
        doc["openapi"]
    );
    for path in [
        "/orders/{order_uid}",
        "/orders",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
    }
    assert_eq!(
        serde_json::from_slice::<Value>(&repo_file("static/openapi.json")).unwrap(),
        doc
    );
}

#[test]
fn other_methods_get_405_and_unknown_paths_404() {
    let w = World::start(&[]);
    let orders = many_orders("methods", 1);
    publish_and_wait(&w, &orders);
    let uid = &orders[0].0;

    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        for path in [
            format!("/orders/{uid}"),
            "/orders".into(),
            "/".into(),
            "/healthz".into(),
        ] {
            let resp = w.service.request(method, &path);
            assert_eq!(resp.status, 405, "{method} {path}: {}", resp.text());
            assert_eq!(resp.header("allow"), Some("GET, HEAD"), "{method} {path}");
            assert!(
                resp.json()["error"].is_string(),
                "{method} {path}: {}",
                resp.text()
            );
        }
    }
    let head = w.service.request("HEAD", &format!("/orders/{uid}"));
    assert_eq!(head.status, 200);
    assert!(head
        .header("content-type")
        .is_some_and(|v| v.starts_with("application/json")));
    assert_eq!(w.service.request("HEAD", "/healthz").status, 200);

    let resp = w.service.get_full("/no/such/page");
    assert_eq!(resp.status, 404);
    assert!(resp.json()["error"].is_string());
    assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
}

/// Reads until the server closes the connection; panics if it is still open
/// after `limit`.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut bytes = Vec::new();
    match stream.read_to_end(&mut bytes) {
        Ok(_) => bytes,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => bytes,
        Err(e) => panic!("still open after {limit:?} ({e}); read so far: {bytes:?}"),
    }
}

#[test]
fn connections_that_send_nothing_are_closed_after_the_idle_timeout() {
    let w = World::start(&[("HTTP_IDLE_TIMEOUT", "1")]);
    let addr = w.service.address();
    let request = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    let connect = || TcpStream::connect(&addr).unwrap();

    // A client that keeps asking, every half second for 2.5 s, is not cut off.
    let mut busy = connect();
    busy.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for _ in 0..5 {
        busy.write_all(request).unwrap();
        let mut head = [0u8; 12];
        busy.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        let mut rest = [0u8; 512];
        let _ = busy.read(&mut rest).unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }

    let started = Instant::now();
    let mut idle = connect(); // never a request
    let mut stalled = connect(); // half a request head, then silence
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    let mut answered = connect(); // one request answered, then silence
    answered.write_all(request).unwrap();
    let limit = Duration::from_secs(10);
    assert!(read_until_closed(&mut idle, limit).is_empty());
    assert!(!read_until_closed(&mut stalled, limit).starts_with(b"HTTP/1.1 200"));
    assert!(read_until_closed(&mut answered, limit).starts_with(b"HTTP/1.1 200"));
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(5),
        "closed after {closed_after:?} with HTTP_IDLE_TIMEOUT=1"
    );
    let counted = w
        .service
        .metric("order_service_http_idle_connections_closed_total", &[]);
    assert!(counted >= Some(3.0), "{counted:?}");
}

/// tiny_http 0.12's pool leaves some connections of a burst queued without a
/// thread until another connection ends; the service notices their unread
/// requests and gives each a thread.
#[test]
fn a_burst_of_new_connections_is_answered_in_full() {
    const BURST: usize = 200;
    let w = World::start(&[]);
    let addr = w.service.address();
    let started = Instant::now();
    let mut streams: Vec<TcpStream> = (0..BURST)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    for stream in &mut streams {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
    }
    let mut unanswered = 0;
    for stream in &mut streams {
        let wait = Duration::from_secs(3).saturating_sub(started.elapsed());
        stream
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .unwrap();
        let mut head = [0u8; 12];
        match stream.read_exact(&mut head) {
            Ok(()) => assert_eq!(&head, b"HTTP/1.1 200"),
            Err(_) => unanswered += 1,
        }
    }
    let freed = w
        .service
        .metric("order_service_http_stalled_connections_freed_total", &[]);
    eprintln!(
        "{BURST} new connections at once: {} answered within 3 s (all read after {:?}); \
         stalled ones freed: {freed:?}",
        BURST - unanswered,
        started.elapsed()
    );
    assert_eq!(unanswered, 0, "of {BURST}, unanswered after 3 s");
}

/// One answer read off a raw socket: what tiny_http or an HTTP client could
/// hide (the exact headers, a body after a 304 or a HEAD) stays visible.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `method path` with `headers` and `Connection: close` to `addr`,
/// and reads the whole answer until the server closes.
fn raw(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Raw {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut bytes = Vec::new();
    stream
        .read_to_end(&mut bytes)
        .unwrap_or_else(|e| panic!("{method} {path}: {e} after {bytes:?}"));
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {:?}", String::from_utf8_lossy(&bytes)));
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Raw {
        status,
        headers,
        body: bytes[end + 4..].to_vec(),
    }
}

/// The start-up line (C1) the service wrote to stdout, from its log.
fn startup_line(service: &Service) -> Value {
    let log = service.log();
    let line = log
        .lines()
        .find(|l| l.starts_with("{\"http_addr\""))
        .unwrap_or_else(|| panic!("no start-up line in the log:\n{log}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"))
}

#[test]
fn with_an_admin_port_the_public_port_answers_404_for_the_admin_routes() {
    let w = World::start(&[("ADMIN_ADDR", "127.0.0.1:0")]);
    let started = startup_line(&w.service);
    assert_eq!(
        started["http_addr"].as_str(),
        Some(w.service.address().as_str()),
        "{started}"
    );
    let admin = started["admin_addr"]
        .as_str()
        .unwrap_or_else(|| panic!("no admin_addr in {started}"))
        .to_owned();
    assert_ne!(admin, w.service.address());
    let orders = many_orders("admin", 2);
    w.publisher.publish_many(&w.names.subject, &orders);
    wait_until(Duration::from_secs(20), "2 orders cached", || {
        metric_value(
            &String::from_utf8_lossy(&raw(&admin, "GET", "/metrics", &[]).body),
            "order_service_cache_orders",
            &[],
        ) == Some(2.0)
    });
    let public = w.service.address();
    for path in [
        "/metrics",
        "/orders",
        "/orders?limit=1",
        "/random-order",
        "/rejections",
    ] {
        let answer = raw(&public, "GET", path, &[]);
        assert_eq!(answer.status, 404, "public {path}");
        let body: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(body["error"], "not found", "public {path}: {body}");
    }
    // The admin port serves them.
    let metrics = raw(&admin, "GET", "/metrics", &[]);
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("Content-Type")
        .is_some_and(|t| t.starts_with("text/plain")));
    assert!(String::from_utf8_lossy(&metrics.body).contains("order_service_ready 1"));
    let listing = raw(&admin, "GET", "/orders", &[]);
    assert_eq!(listing.status, 200);
    let page: Value = serde_json::from_slice(&listing.body).unwrap();
    assert_eq!(uids_of(&page).len(), 2, "{page}");
    let random = raw(&admin, "GET", "/random-order", &[]);
    assert_eq!(random.status, 200);
    // What an outsider may reach stays on the public port.
    for path in [
        format!("/orders/{}", orders[0].0),
        "/healthz".into(),
        "/readyz".into(),
        "/openapi.json".into(),
        "/".into(),
    ] {
        assert_eq!(raw(&public, "GET", &path, &[]).status, 200, "public {path}");
    }
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("not gzip ({e}): {bytes:?}"));
    out
}

/// Issue 12, semantics, over raw sockets: strong ETags derived from the
/// bytes, If-None-Match (lists, `*`) → 304 without a body, Cache-Control,
/// gzip negotiated with q-values, Vary, Content-Length = encoded length,
/// HEAD = GET's head without a body.
#[test]
fn etags_304s_cache_control_gzip_and_head_as_clients_and_caches_expect() {
    let w = World::start(&[]);
    let addr = w.service.address();
    let orders = many_orders("etag", 1);
    publish_and_wait(&w, &orders);
    let path = format!("/orders/{}", orders[0].0);

    let plain = raw(&addr, "GET", &path, &[]);
    assert_eq!(plain.status, 200);
    let etag = plain.header("ETag").expect("an ETag").to_owned();
    // Strong, and derived from the bytes alone: the same on every replica.
    assert_eq!(
        etag,
        format!("\"{:032x}\"", xxhash_rust::xxh3::xxh3_128(&plain.body))
    );
    assert_eq!(
        plain.header("Cache-Control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(plain.header("Vary"), Some("Accept-Encoding"));
    assert_eq!(plain.header("Content-Encoding"), None);
    assert_eq!(
        plain.header("Content-Length"),
        Some(plain.body.len().to_string().as_str())
    );

    // gzip: its own ETag, the encoded length, the same bytes once inflated.
    let gz = raw(&addr, "GET", &path, &[("Accept-Encoding", "gzip, br")]);
    assert_eq!(gz.status, 200);
    assert_eq!(gz.header("Content-Encoding"), Some("gzip"));
    assert_eq!(gz.header("Vary"), Some("Accept-Encoding"));
    assert_eq!(
        gz.header("Content-Length"),
        Some(gz.body.len().to_string().as_str())
    );
    assert!(gz.body.len() < plain.body.len());
    assert_eq!(gunzip(&gz.body), plain.body);
    let gz_etag = gz.header("ETag").unwrap().to_owned();
    assert_ne!(gz_etag, etag);
    // Compressed once: the same bytes again.
    let again = raw(&addr, "GET", &path, &[("Accept-Encoding", "gzip")]);
    assert_eq!(again.body, gz.body);
    for (field, gzip) in [
        ("gzip;q=0", false),
        ("gzip;q=0, identity", false),
        ("identity;q=1, gzip;q=0.5", false),
        ("*", true),
        ("*;q=0", false),
        ("identity;q=0, gzip;q=0.1", true),
        ("deflate", false),
    ] {
        let answer = raw(&addr, "GET", &path, &[("Accept-Encoding", field)]);
        assert_eq!(answer.status, 200, "{field}");
        assert_eq!(
            answer.header("Content-Encoding") == Some("gzip"),
            gzip,
            "Accept-Encoding: {field}"
        );
    }

    // If-None-Match: exact, in a list, weak form, `*` → 304, no body.
    for (field, coding) in [
        (etag.clone(), None),
        (format!("\"nope\", {etag}"), None),
        (format!("W/{etag}"), None),
        ("*".to_owned(), None),
        (gz_etag.clone(), Some("gzip")),
    ] {
        let mut headers = vec![("If-None-Match", field.as_str())];
        if let Some(coding) = coding {
            headers.push(("Accept-Encoding", coding));
        }
        let answer = raw(&addr, "GET", &path, &headers);
        assert_eq!(answer.status, 304, "If-None-Match: {field}");
        assert!(answer.body.is_empty(), "a 304 with a body: {field}");
        assert!(answer.header("ETag").is_some());
        assert_eq!(answer.header("Vary"), Some("Accept-Encoding"));
        assert!(answer.header("Cache-Control").is_some());
        assert_eq!(answer.header("Transfer-Encoding"), None);
    }
    // Another representation's ETag does not match.
    let answer = raw(&addr, "GET", &path, &[("If-None-Match", &gz_etag)]);
    assert_eq!(answer.status, 200);

    // HEAD: GET's head, no body.
    for accept in ["identity", "gzip"] {
        let get = raw(&addr, "GET", &path, &[("Accept-Encoding", accept)]);
        let head = raw(&addr, "HEAD", &path, &[("Accept-Encoding", accept)]);
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty(), "HEAD sent a body");
        for name in [
            "Content-Length",
            "Content-Type",
            "Content-Encoding",
            "ETag",
            "Vary",
            "Cache-Control",
        ] {
            assert_eq!(
                head.header(name),
                get.header(name),
                "HEAD {name} ({accept})"
            );
        }
    }

    // Not found, lists, probes, metrics: never stored.
    for path in [
        "/orders/no-such-order",
        "/orders",
        "/random-order",
        "/readyz",
        "/metrics",
        "/healthz",
    ] {
        let answer = raw(&addr, "GET", path, &[("Accept-Encoding", "gzip")]);
        assert_eq!(answer.header("Cache-Control"), Some("no-store"), "{path}");
        assert_eq!(answer.header("ETag"), None, "{path}");
    }

    // The page and its assets: compressed too, revalidated with a 304.
    for (path, file) in [
        ("/", "static/index.html"),
        ("/assets/app.js", "static/dist/app.js"),
        ("/assets/style.css", "static/style.css"),
    ] {
        let answer = raw(&addr, "GET", path, &[("Accept-Encoding", "gzip")]);
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(answer.header("Content-Encoding"), Some("gzip"), "{path}");
        assert_eq!(gunzip(&answer.body), repo_file(file), "{path}");
        assert_eq!(answer.header("Cache-Control"), Some("no-cache"), "{path}");
        let etag = answer.header("ETag").unwrap();
        let revalidated = raw(
            &addr,
            "GET",
            path,
            &[("Accept-Encoding", "gzip"), ("If-None-Match", etag)],
        );
        assert_eq!(revalidated.status, 304, "{path}");
        assert!(revalidated.body.is_empty(), "{path}");
    }
}
