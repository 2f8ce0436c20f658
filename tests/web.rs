//! User story: "a person looks an order up in the browser". The real service
//! runs against the shared PostgreSQL and NATS with the canonical order and
//! two orders carrying markup in their strings; `static/e2e/run.mjs` then
//! drives Debian's headless Chromium through the page (search, 404, 400,
//! Get random, shared links, the back button, XSS, the CSP, the Rejected view,
//! axe-core on every view at two widths) and leaves its screenshots in
//! `target/web-artifacts/`. The Rejected view's checks there answer
//! `GET /rejections` with fixture JSON from playwright, because the service
//! does not serve that route yet (issue 15, contract C3).

pub mod common;

use common::*;
use serde_json::Value;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
/// run.mjs gives up by itself after 240 s; this is the backstop.
const E2E_TIMEOUT: Duration = Duration::from_secs(290);

const XSS_IMG_UID: &str = "xss_img_onerror";
const XSS_SCRIPT_UID: &str = "xss_script_item";
const XSS_IMG: &str = r#"<img src=x onerror="window.__xss=1">"#;
const XSS_SCRIPT: &str = "<script>window.__xss=2</script>";

fn static_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("static")
}

/// `target/web-artifacts`.
fn artifact_dir() -> PathBuf {
    let tmp = target_tmp();
    let target = tmp.parent().map(Path::to_path_buf).unwrap_or(tmp);
    target.join("web-artifacts")
}

/// Fails with what to run when the browser, node or the npm packages are missing.
fn require_browser_tools() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "the web test needs Debian's chromium at {CHROMIUM}: run `make deps` \
         (or `apt-get install -y chromium`)"
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|out| out.status.success()),
        "the web test needs node on PATH: run `make deps` (or `apt-get install -y nodejs npm`)"
    );
    let playwright = static_dir().join("node_modules/playwright-core/package.json");
    assert!(
        playwright.exists(),
        "the web test needs the page's npm packages ({} is missing): run `make deps` \
         (or `cd static && npm ci`)",
        playwright.display()
    );
}

/// The canonical order with `uid`, its delivery name and first item name set.
fn order_with_markup(uid: &str, delivery_name: &str, item_name: &str) -> Vec<u8> {
    let mut order = order_value(uid);
    order["delivery"]["name"] = Value::from(delivery_name);
    order["items"][0]["name"] = Value::from(item_name);
    serde_json::to_vec(&order).expect("serialise order")
}

#[test]
fn the_page_finds_shows_and_escapes_orders_in_a_real_browser() {
    require_browser_tools();

    let setup = Setup::shared();
    let service = setup.start_ready();
    let publisher = setup.publisher();

    // The page keeps "Get random" on a 404 only when the body says the store is
    // empty (any other 404 means the route is not served on this port): pin that text.
    let (status, empty) = service.get_json("/random-order");
    assert_eq!(
        (status, &empty["error"]),
        (404, &Value::from("no orders stored yet")),
        "the page's EMPTY_STORE_ERROR (static/src/app.ts) no longer matches: {empty}"
    );

    let canonical = canonical_order();
    let canonical_uid = canonical["order_uid"]
        .as_str()
        .expect("model.json has an order_uid")
        .to_owned();
    let orders = [
        (
            canonical_uid.clone(),
            serde_json::to_vec(&canonical).expect("serialise order"),
        ),
        (
            XSS_IMG_UID.to_owned(),
            order_with_markup(XSS_IMG_UID, XSS_IMG, "Mascaras"),
        ),
        (
            XSS_SCRIPT_UID.to_owned(),
            order_with_markup(XSS_SCRIPT_UID, "Test Testov", XSS_SCRIPT),
        ),
    ];
    for (uid, body) in &orders {
        publisher.publish(&setup.names.subject, Some(uid), body);
    }
    wait_until(Duration::from_secs(20), "the three orders served", || {
        orders
            .iter()
            .all(|(uid, _)| service.order_status(uid) == 200)
    });

    // The XSS checks in the browser only mean something if the markup was stored as sent.
    let (_, stored) = service.get_json(&format!("/orders/{XSS_IMG_UID}"));
    assert_eq!(stored["delivery"]["name"], XSS_IMG, "{stored}");
    let (_, stored) = service.get_json(&format!("/orders/{XSS_SCRIPT_UID}"));
    assert_eq!(stored["items"][0]["name"], XSS_SCRIPT, "{stored}");

    let artifacts = run_e2e(
        &service,
        &[
            ("E2E_ORDER_UID", canonical_uid.as_str()),
            ("E2E_XSS_UIDS", &format!("{XSS_IMG_UID},{XSS_SCRIPT_UID}")),
        ],
    );
    assert!(
        artifacts.join("order.png").exists(),
        "run.mjs passed but wrote no order.png"
    );
}

/// Runs `static/e2e/run.mjs` against `service` with `env`, fails the test with
/// its log and the service's when a check fails, and returns the artifact directory.
fn run_e2e(service: &Service, env: &[(&str, &str)]) -> PathBuf {
    let artifacts = artifact_dir();
    fs::create_dir_all(&artifacts).expect("create target/web-artifacts");
    let log_path = artifacts.join("e2e.log");
    let log = File::create(&log_path).expect("create e2e.log");
    let mut node = Command::new("node")
        .arg(static_dir().join("e2e/run.mjs"))
        .arg(&service.base_url)
        .arg(&artifacts)
        .envs(env.iter().copied())
        .env("CHROMIUM", CHROMIUM)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log)
        .spawn()
        .expect("spawn node static/e2e/run.mjs");

    let started = Instant::now();
    let status = loop {
        if let Some(status) = node.try_wait().expect("wait for node") {
            break Some(status);
        }
        if started.elapsed() > E2E_TIMEOUT {
            let _ = node.kill();
            let _ = node.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let output = fs::read_to_string(&log_path).unwrap_or_default();
    match status {
        Some(status) => assert!(
            status.success(),
            "static/e2e/run.mjs failed ({status}); screenshots in {}:\n{output}\nservice log:\n{}",
            artifacts.display(),
            service.log_tail()
        ),
        None => panic!("static/e2e/run.mjs still ran after {E2E_TIMEOUT:?}; killed it:\n{output}"),
    }
    println!("{output}");
    artifacts
}

/// Hostile messages the real service must dead-letter, each with the kind it
/// should get; every one sets `window.__xss` if its markup ever runs in the page.
fn hostile_dead_letters() -> Vec<(&'static str, Vec<u8>)> {
    let mut bad_uid = canonical_order();
    bad_uid["order_uid"] = Value::from("<script>window.__xss=7</script>");
    vec![
        (
            "not_json",
            br#"<img src=x onerror="window.__xss=6">"#.to_vec(),
        ),
        (
            "bad_order_uid",
            serde_json::to_vec(&bad_uid).expect("serialise order"),
        ),
        (
            "not_utf8",
            b"<b>\xff\xfe</b><script>window.__xss=8</script>".to_vec(),
        ),
    ]
}

/// The page's Rejected view is otherwise tested above against fixture JSON;
/// this is the end-to-end check (contract C3): hostile messages go through
/// NATS, the real service dead-letters them, `/rejections` lists them, and
/// the page shows them as text.
#[test]
fn the_rejected_view_shows_real_dead_letters_as_text() {
    require_browser_tools();

    let setup = Setup::shared();
    let service = setup.start_ready();
    let publisher = setup.publisher();

    let sent = hostile_dead_letters();
    let sequences: Vec<u64> = sent
        .iter()
        .map(|(_, body)| publisher.publish(&setup.names.subject, None, body).sequence)
        .collect();

    // The dead letters as /rejections lists them, in the order sent.
    let mut listed: Vec<Value> = Vec::new();
    wait_until(
        Duration::from_secs(20),
        "the three dead letters listed by GET /rejections",
        || {
            let (status, body) = service.get_json("/rejections?limit=100");
            if status != 200 {
                return false;
            }
            let rows = body["rejections"].as_array().cloned().unwrap_or_default();
            listed = sequences
                .iter()
                .filter_map(|seq| {
                    rows.iter()
                        .find(|r| r["stream_sequence"].as_u64() == Some(*seq))
                        .cloned()
                })
                .collect();
            listed.len() == sequences.len()
        },
    );

    for ((kind, body), row) in sent.iter().zip(&listed) {
        assert_eq!(row["kind"], *kind, "{row}");
        assert_eq!(row["payload_length"], body.len(), "{row}");
        assert_eq!(row["payload_truncated"], false, "{row}");
        let payload = row["payload"].as_str().expect("payload is a string");
        match std::str::from_utf8(body) {
            Ok(text) => assert_eq!(payload, text, "{row}"),
            Err(_) => assert!(
                payload.contains("\\x") && !payload.contains('\u{fffd}'),
                "bytes that are not UTF-8 are not \\xNN escapes: {row}"
            ),
        }
    }

    let expected: Vec<Value> = listed
        .iter()
        .map(|row| serde_json::json!({"kind": row["kind"], "payload": row["payload"]}))
        .collect();
    let artifacts = run_e2e(
        &service,
        &[("E2E_LIVE_REJECTIONS", &Value::from(expected).to_string())],
    );
    assert!(
        artifacts.join("rejected-live.png").exists(),
        "run.mjs passed but wrote no rejected-live.png"
    );
}
