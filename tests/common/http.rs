//! The HTTP client side of `Service`: requests of any method, whole
//! answers, and `/metrics` read as Prometheus text.

use serde_json::Value;
use std::time::{Duration, Instant};

use super::Service;

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {}", self.text()))
    }
}

impl Service {
    /// Polls `/readyz` until its body names `dependency` as `state` (`"ok"`
    /// or `"unavailable"`), and asserts it answered 200 all along: an outage
    /// of a dependency every replica shares must not take the pod out of its
    /// Service (issue 14). Returns the body that matched.
    pub fn wait_dependency(&self, dependency: &str, state: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self.get_json("/readyz");
            assert_eq!(
                status, 200,
                "/readyz while waiting for {dependency} {state}: {body}"
            );
            if body[dependency] == state {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz did not name {dependency} {state} within {timeout:?}: {body}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A request of any method; transport errors are `Err` with a message.
    pub fn try_request(&self, method: &str, path: &str) -> Result<HttpResponse, String> {
        let url = format!("{}{}", self.base_url, path);
        let result = match method {
            "GET" => self.agent.get(&url).call(),
            "HEAD" => self.agent.head(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            "OPTIONS" => self.agent.options(&url).call(),
            "POST" => self.agent.post(&url).send(&b"{}"[..]),
            "PUT" => self.agent.put(&url).send(&b"{}"[..]),
            "PATCH" => self.agent.patch(&url).send(&b"{}"[..]),
            other => return Err(format!("unsupported method {other}")),
        };
        let mut response = result.map_err(|e| format!("{method} {url}: {e}"))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = if method == "HEAD" {
            Vec::new()
        } else {
            response
                .body_mut()
                .with_config()
                .limit(64 * 1024 * 1024)
                .read_to_vec()
                .map_err(|e| format!("{method} {url}: reading body: {e}"))?
        };
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }

    /// A request that must get an answer (panics with the log otherwise).
    pub fn request(&self, method: &str, path: &str) -> HttpResponse {
        self.try_request(method, path)
            .unwrap_or_else(|e| panic!("{e}\nlog:\n{}", self.log_tail()))
    }

    /// `GET path` → (status, body as text).
    pub fn get(&self, path: &str) -> (u16, String) {
        let resp = self.request("GET", path);
        (resp.status, resp.text())
    }

    /// `GET path` → the whole answer.
    pub fn get_full(&self, path: &str) -> HttpResponse {
        self.request("GET", path)
    }

    /// `GET path` → (status, body parsed as JSON).
    pub fn get_json(&self, path: &str) -> (u16, Value) {
        let resp = self.request("GET", path);
        let value = resp.json();
        (resp.status, value)
    }

    /// `GET /orders/{uid}` status.
    pub fn order_status(&self, uid: &str) -> u16 {
        self.request("GET", &format!("/orders/{uid}")).status
    }

    /// `GET /metrics` as text.
    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "/metrics: {body}");
        body
    }

    /// The value of the first sample in `/metrics` named `name` whose labels
    /// include every `key="value"` in `labels`; `None` if there is none.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics(), name, labels)
    }

    /// `order_service_cache_orders`, 0 when the metric is missing.
    pub fn cached_orders(&self) -> u64 {
        self.metric("order_service_cache_orders", &[])
            .unwrap_or(0.0) as u64
    }

    /// `order_service_orders_stored_total`: orders this process inserted.
    pub fn stored_total(&self) -> u64 {
        self.metric("order_service_orders_stored_total", &[])
            .unwrap_or(0.0) as u64
    }

    /// `order_service_duplicates_total`: redelivered or republished orders
    /// this process found already stored.
    pub fn duplicates_total(&self) -> u64 {
        self.metric("order_service_duplicates_total", &[])
            .unwrap_or(0.0) as u64
    }

    /// The `digest` label of `order_service_cache_digest_info`: equal on two
    /// replicas when their caches hold the same orders with the same bytes.
    pub fn cache_digest(&self) -> String {
        let metrics = self.metrics();
        metrics
            .lines()
            .find(|l| l.starts_with("order_service_cache_digest_info{"))
            .and_then(|l| l.split("digest=\"").nth(1))
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no order_service_cache_digest_info in:\n{metrics}"))
            .to_owned()
    }
}

/// Finds a sample in Prometheus text: `name{labels} value` or `name value`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value_text) = if let Some(after) = rest.strip_prefix('{') {
            // Label values may hold '}' (route="/orders/{order_uid}"): find
            // the closing brace outside quotes.
            let Some(end) = closing_brace(after) else {
                continue;
            };
            (&after[..end], after[end + 1..].trim())
        } else if rest.starts_with(' ') {
            ("", rest.trim())
        } else {
            continue;
        };
        let all_match = labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
        if !all_match {
            continue;
        }
        let number = value_text.split_whitespace().next()?;
        return number.parse().ok();
    }
    None
}

/// The index of the `}` that ends a label set, skipping quoted values.
fn closing_brace(text: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return Some(i),
            _ => {}
        }
    }
    None
}
