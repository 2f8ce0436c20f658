//! User story: "an operator opens the Grafana dashboard and every panel
//! has data". The dashboard (`kube/grafana/order-service-dashboard.json`)
//! queries metrics by name; this starts the service and checks that each
//! name it queries is a series in `/metrics`, so a renamed metric or a
//! typo'd query fails here, not on an empty panel in production.

pub mod common;

use common::*;
use std::collections::BTreeSet;
use std::process::Command;

/// Every metric name the dashboard queries, from the deploy tooling's own
/// extractor (one copy of the rules for finding queries; check-deploy
/// runs it too). A histogram appears as its `_bucket` series.
fn dashboard_metric_names() -> BTreeSet<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let output = Command::new("python3")
        .arg("tests/deploy/dashboard_metrics.py")
        .arg("kube/grafana/order-service-dashboard.json")
        .current_dir(root)
        .output()
        .expect("run python3 tests/deploy/dashboard_metrics.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "dashboard_metrics.py failed ({}): {stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let names: BTreeSet<String> = stdout.lines().map(str::to_owned).collect();
    assert!(!names.is_empty(), "the dashboard queries no metric");
    names
}

/// The names of the series in a Prometheus text exposition (comments and
/// `# TYPE` lines are not series: a metric declared but never written
/// would give a panel no data).
fn series_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_metric_the_dashboard_queries_is_in_metrics() {
    let wanted = dashboard_metric_names();
    let w = World::start(&[]);
    // Per-route series appear once a route has answered; a batch commits
    // once an order arrives.
    assert_eq!(w.service.get("/healthz").0, 200);
    let uid = unique("dash");
    w.publisher
        .publish(&w.names.subject, None, &order_with_uid(&uid));
    wait_until(
        std::time::Duration::from_secs(15),
        "the order served",
        || w.service.order_status(&uid) == 200,
    );
    let exposition = w.service.metrics();
    let present = series_names(&exposition);
    let missing: Vec<&String> = wanted.difference(&present).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not have: {missing:?}\n/metrics:\n{exposition}"
    );
}
