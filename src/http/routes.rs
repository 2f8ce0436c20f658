//! `route`: one function from a request to a reply over the cache, the
//! health record and the counters, without a socket (its tests below need
//! none). Called by the `http-N` workers.
//!
//! Invariant: a route never touches PostgreSQL or NATS itself. What memory
//! cannot answer it asks a loader thread for, with a deadline, and answers
//! 503 with `Retry-After` when none comes: never a 404 for what may exist.

use super::encoding::Caching;
use crate::cache::{Lookup, OrderCache, Recall};
use crate::health::Health;
use crate::loader::LoadError;
use crate::metrics::{
    render_huge_bodies, render_readiness, CacheFigures, Metrics, ReadinessFigures,
};
use crate::order::{OrderUid, RejectionKind};
use serde_json::json;
use std::borrow::Cow;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tiny_http::Method;

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// The page and its assets, compiled into the binary: no file-system paths
/// at run time.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("../../static/index.html"),
    ),
    (
        "/index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../static/index.html"),
    ),
    (
        "/assets/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/dist/app.js"),
    ),
    (
        "/assets/style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../static/style.css"),
    ),
    (
        "/favicon.svg",
        "image/svg+xml",
        include_bytes!("../../static/favicon.svg"),
    ),
];

const OPENAPI: &[u8] = include_bytes!("../../static/openapi.json");

const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// What the workers share.
pub struct HttpState {
    pub cache: Arc<OrderCache>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
}

/// What a request is counted under in `http_requests_total{route}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Order,
    Orders,
    RandomOrder,
    Rejections,
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    Page,
    NotFound,
    /// A request whose body was refused (413) before it was routed.
    BodyRefused,
}

impl Route {
    /// The metrics label: a path template, so that uids never become labels.
    pub fn label(self) -> &'static str {
        match self {
            Route::Order => "/orders/{order_uid}",
            Route::Orders => "/orders",
            Route::RandomOrder => "/random-order",
            Route::Rejections => "/rejections",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::OpenApi => "/openapi.json",
            Route::Page => "page",
            Route::NotFound => "unknown",
            Route::BodyRefused => "body_refused",
        }
    }
}

/// A response body without copies: cached orders are shared, assets static.
pub enum Body {
    Static(&'static [u8]),
    Shared(Arc<[u8]>),
    Owned(Vec<u8>),
}

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        match self {
            Body::Static(bytes) => bytes,
            Body::Shared(bytes) => bytes,
            Body::Owned(bytes) => bytes,
        }
    }
}

/// A routed answer, before it becomes bytes (`wire`).
pub struct Reply {
    pub(super) route: Route,
    pub(super) status: u16,
    pub(super) content_type: &'static str,
    pub(super) body: Body,
    pub(super) headers: Vec<(&'static str, Cow<'static, str>)>,
    /// How the answer may be cached; `encoding::finish` acts on it.
    pub(super) caching: Caching,
}

impl Reply {
    fn new(route: Route, status: u16, content_type: &'static str, body: Body) -> Reply {
        Reply {
            route,
            status,
            content_type,
            body,
            headers: Vec::new(),
            caching: Caching::NoStore,
        }
    }

    /// A JSON body: answers and errors alike.
    pub(super) fn json(route: Route, status: u16, value: serde_json::Value) -> Reply {
        let mut body = serde_json::to_vec(&value).unwrap_or_default();
        body.push(b'\n');
        Reply::new(route, status, "application/json", Body::Owned(body))
    }

    pub(super) fn caching(mut self, caching: Caching) -> Reply {
        self.caching = caching;
        self
    }

    pub(super) fn header(
        mut self,
        name: &'static str,
        value: impl Into<Cow<'static, str>>,
    ) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

/// Which routes a socket serves (contract C4): a parameter of the socket's
/// workers, so that `route` stays one pure function for both ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Every route: `HTTP_ADDR` when `ADMIN_ADDR` is unset, and the admin
    /// port (a port an operator reaches may serve what the public one does).
    All,
    /// `HTTP_ADDR` when `ADMIN_ADDR` is set: all but the admin routes, which
    /// answer 404 as if they did not exist.
    Public,
}

/// The routes an outsider must not reach: `/orders` and `/random-order`
/// walk every stored order (each with a customer's name and address), the
/// metrics and dead letters are for operators. `/orders/{uid}` is public:
/// its uid is the secret.
fn is_admin(path: &str) -> bool {
    matches!(
        path,
        "/metrics" | "/orders" | "/orders/" | "/random-order" | "/rejections"
    )
}

/// What routing made of a request.
pub enum Routed {
    Reply(Reply),
    /// An order memory lacks (bounded cache): the reply is `order_reply` of
    /// what `OrderCache::load_then` finds. The worker parks the request
    /// there and goes on, so misses never hold the workers that serve hits.
    Load(OrderUid),
}

impl Routed {
    /// The reply, waiting for a loader if need be (unit tests).
    #[cfg(test)]
    pub fn waited(self, cache: &OrderCache) -> Reply {
        match self {
            Routed::Reply(reply) => reply,
            Routed::Load(uid) => order_reply(&uid, cache.lookup(uid.as_str())),
        }
    }
}

/// `route` for a socket serving `served`.
pub fn route_on(
    served: Served,
    state: &HttpState,
    method: &Method,
    url: &str,
    request_header: impl Fn(&str) -> Option<String>,
) -> Routed {
    let path = url.split_once('?').map_or(url, |(path, _)| path);
    if served == Served::Public && is_admin(path) {
        return Routed::Reply(Reply::json(
            Route::NotFound,
            404,
            json!({"error": "not found", "path": echo(path)}),
        ));
    }
    route(state, method, url, request_header)
}

/// Every route, in one place. `_request_header` looks up a request header
/// (none is read today: validators and codings are settled after routing,
/// in `encoding::finish`).
pub fn route(
    state: &HttpState,
    method: &Method,
    url: &str,
    _request_header: impl Fn(&str) -> Option<String>,
) -> Routed {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let route = route_of(path);
    if !matches!(method, Method::Get | Method::Head) {
        return Routed::Reply(
            Reply::json(
                route,
                405,
                json!({"error": "method not allowed", "allow": ["GET", "HEAD"]}),
            )
            .header("Allow", "GET, HEAD"),
        );
    }
    let reply = match route {
        Route::Order => return order(&state.cache, &path["/orders/".len()..]),
        Route::Orders => orders(&state.cache, query),
        Route::RandomOrder => match state.cache.random() {
            Ok(Some(uid)) => Reply::json(route, 200, json!({ "order_uid": &*uid })),
            Ok(None) => Reply::json(route, 404, json!({"error": "no orders stored yet"})),
            Err(err) => unavailable(route, &err),
        },
        Route::Rejections => rejections(&state.cache, query),
        Route::Healthz => Reply::json(route, 200, json!({"status": "ok"})),
        Route::Readyz => readyz(state),
        Route::Metrics => metrics(state),
        Route::OpenApi => Reply::new(route, 200, "application/json", Body::Static(OPENAPI))
            .caching(Caching::Revalidate),
        Route::Page => asset(path),
        Route::NotFound | Route::BodyRefused => Reply::json(
            route,
            404,
            json!({"error": "not found", "path": echo(path)}),
        ),
    };
    Routed::Reply(reply)
}

/// The cache's figures for `/metrics`, which knows nothing of the cache.
fn cache_figures(cache: &OrderCache) -> CacheFigures {
    let (orders, bytes, digest) = cache.stats();
    CacheFigures {
        orders,
        bytes,
        digest,
        loaded: cache.is_loaded(),
    }
}

fn route_of(path: &str) -> Route {
    match path {
        "/orders" | "/orders/" => Route::Orders,
        _ if path.starts_with("/orders/") => Route::Order,
        "/random-order" => Route::RandomOrder,
        "/rejections" => Route::Rejections,
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        "/metrics" => Route::Metrics,
        "/openapi.json" => Route::OpenApi,
        _ if ASSETS.iter().any(|(p, _, _)| *p == path) => Route::Page,
        _ => Route::NotFound,
    }
}

fn order(cache: &OrderCache, raw_uid: &str) -> Routed {
    let uid = match OrderUid::parse(raw_uid) {
        Ok(uid) => uid,
        Err(why) => {
            return Routed::Reply(Reply::json(
                Route::Order,
                400,
                json!({"error": format!("malformed order_uid: {why}"), "order_uid": echo(raw_uid)}),
            ))
        }
    };
    let lookup = match cache.recall(uid.as_str()) {
        Recall::Found(body) => Lookup::Found(body),
        Recall::NotFound => Lookup::NotFound,
        Recall::Load => return Routed::Load(uid),
    };
    Routed::Reply(order_reply(&uid, lookup))
}

/// The answer for the order `uid`, from memory or a loader.
pub fn order_reply(uid: &OrderUid, lookup: Lookup) -> Reply {
    match lookup {
        Lookup::Found(body) => {
            Reply::new(Route::Order, 200, "application/json", Body::Shared(body))
                .caching(Caching::Immutable)
        }
        Lookup::NotFound => Reply::json(
            Route::Order,
            404,
            json!({"error": "order not found", "order_uid": uid.as_str()}),
        ),
        Lookup::Unavailable(err) => unavailable(Route::Order, &err),
    }
}

/// Digits only: `str::parse` would also take a leading `+`, which the
/// OpenAPI document's patterns do not allow.
fn unsigned(value: &str) -> Option<&str> {
    (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit())).then_some(value)
}

/// Client text quoted back in an error, cut to a readable length.
fn echo(text: &str) -> String {
    const LONGEST: usize = 128;
    match text.char_indices().nth(LONGEST) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// `limit`, `cursor` and (where `kinds` allows) `kind` of a page query;
/// `Err` holds the 400 to answer.
struct PageQuery {
    limit: usize,
    cursor: Option<i64>,
    kind: Option<RejectionKind>,
}

fn page_query(route: Route, query: &str, kinds: bool) -> Result<PageQuery, Reply> {
    let bad = |why: String| Reply::json(route, 400, json!({ "error": why }));
    let mut page = PageQuery {
        limit: DEFAULT_PAGE,
        cursor: None,
        kind: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "limit" => match unsigned(value).and_then(|v| v.parse::<usize>().ok()) {
                Some(n) if (1..=MAX_PAGE).contains(&n) => page.limit = n,
                _ => {
                    return Err(bad(format!(
                        "limit must be a whole number from 1 to {MAX_PAGE}"
                    )))
                }
            },
            "cursor" => {
                match unsigned(value.strip_prefix('-').unwrap_or(value)).and(value.parse().ok()) {
                    Some(c) => page.cursor = Some(c),
                    None => {
                        return Err(bad(
                            "cursor must be a next_cursor from an earlier page".into()
                        ))
                    }
                }
            }
            "kind" if kinds => match value.parse::<RejectionKind>() {
                Ok(kind) => page.kind = Some(kind),
                Err(_) => {
                    let labels: Vec<&str> = RejectionKind::ALL.iter().map(|k| k.label()).collect();
                    return Err(bad(format!(
                        "kind {:?} is not one of {}",
                        echo(value),
                        labels.join(", ")
                    )));
                }
            },
            _ => return Err(bad(format!("unknown query parameter {:?}", echo(key)))),
        }
    }
    Ok(page)
}

/// 503 with `Retry-After`: the answer may exist, so never a 404.
fn unavailable(route: Route, err: &LoadError) -> Reply {
    Reply::json(
        route,
        503,
        json!({"error": "temporarily unavailable", "reason": err.to_string()}),
    )
    .header("Retry-After", "1")
}

fn orders(cache: &OrderCache, query: &str) -> Reply {
    let page = match page_query(Route::Orders, query, false) {
        Ok(page) => page,
        Err(reply) => return reply,
    };
    let page = match cache.page(page.cursor, page.limit) {
        Ok(page) => page,
        Err(err) => return unavailable(Route::Orders, &err),
    };
    let uids: Vec<&str> = page.uids.iter().map(|u| &**u).collect();
    Reply::json(
        Route::Orders,
        200,
        json!({"orders": uids, "next_cursor": page.next_cursor.map(|c| c.to_string())}),
    )
}

/// Contract C3: dead letters newest first, read from PostgreSQL by a loader.
fn rejections(cache: &OrderCache, query: &str) -> Reply {
    let query = match page_query(Route::Rejections, query, true) {
        Ok(query) => query,
        Err(reply) => return reply,
    };
    match cache.rejections(query.cursor, query.limit, query.kind) {
        Ok(page) => Reply::json(
            Route::Rejections,
            200,
            json!({
                "rejections": page.rejections,
                "next_cursor": page.next_cursor.map(|c| c.to_string()),
            }),
        ),
        Err(err) => unavailable(Route::Rejections, &err),
    }
}

/// What `/readyz` and the readiness gauges say, from one reading.
struct Ready {
    loaded: bool,
    draining: bool,
    postgres: Option<String>,
    nats: Option<String>,
}

impl Ready {
    fn read(state: &HttpState) -> Ready {
        let readiness = state.health.readiness();
        Ready {
            loaded: state.cache.is_loaded(),
            draining: state.health.is_draining(),
            postgres: readiness.postgres,
            nats: readiness.nats,
        }
    }

    /// Ready = this pod can serve. PostgreSQL and NATS are shared by every
    /// replica: an outage of either is reported, never a reason to leave
    /// the Service (ARCHITECTURE.md, readiness).
    fn is_ready(&self) -> bool {
        self.loaded && !self.draining
    }

    fn figures(&self) -> ReadinessFigures {
        ReadinessFigures {
            ready: self.is_ready(),
            postgres_up: self.postgres.is_none(),
            nats_up: self.nats.is_none(),
        }
    }
}

fn readyz(state: &HttpState) -> Reply {
    let ready = Ready::read(state);
    let mut body = json!({
        "status": if ready.draining { "draining" } else if ready.loaded { "ready" } else { "loading" },
        "cache": if ready.loaded { "loaded" } else { "loading" },
    });
    for (name, problem) in [("postgres", &ready.postgres), ("nats", &ready.nats)] {
        body[name] = json!(if problem.is_some() {
            "unavailable"
        } else {
            "ok"
        });
        if let Some(why) = problem {
            body[format!("{name}_error")] = json!(why);
        }
    }
    if ready.is_ready() {
        Reply::json(Route::Readyz, 200, body)
    } else {
        body["error"] = json!("not ready");
        Reply::json(Route::Readyz, 503, body)
    }
}

fn metrics(state: &HttpState) -> Reply {
    let mut text = state.metrics.render(cache_figures(&state.cache));
    state.cache.render_metrics(&mut text);
    render_readiness(&mut text, &Ready::read(state).figures());
    render_huge_bodies(
        &mut text,
        super::workarounds::HUGE_BODIES_ANSWERED.load(Relaxed),
        super::workarounds::HUGE_BODIES_CLOSED.load(Relaxed),
    );
    Reply::new(
        Route::Metrics,
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        Body::Owned(text.into_bytes()),
    )
}

fn asset(path: &str) -> Reply {
    let Some((_, content_type, bytes)) = ASSETS.iter().find(|(p, _, _)| *p == path) else {
        return Reply::json(
            Route::NotFound,
            404,
            json!({"error": "not found", "path": echo(path)}),
        );
    };
    Reply::new(Route::Page, 200, content_type, Body::Static(bytes))
        .caching(Caching::Revalidate)
        .header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        .header("Referrer-Policy", "no-referrer")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Part;
    use crate::http::server::into_response;
    use crate::store::StoredOrder;
    use serde_json::Value;
    use tiny_http::{Request, StatusCode};

    fn state_with(uids: &[&str]) -> HttpState {
        let cache = OrderCache::new();
        cache.insert(
            uids.iter()
                .enumerate()
                .map(|(i, uid)| StoredOrder {
                    id: i as i64 + 1,
                    uid: (*uid).into(),
                    body: format!("{{\"order_uid\": \"{uid}\"}}").into_bytes().into(),
                })
                .collect(),
        );
        HttpState {
            cache: Arc::new(cache),
            health: Arc::new(Health::new()),
            metrics: Arc::new(Metrics::new()),
        }
    }

    fn get(state: &HttpState, url: &str) -> (u16, Value) {
        let reply = route(state, &Method::Get, url, |_| None).waited(&state.cache);
        let body = serde_json::from_slice(reply.body.as_ref()).unwrap_or(Value::Null);
        (reply.status, body)
    }

    #[test]
    fn order_by_uid() {
        let state = state_with(&["abc"]);
        let reply = route(&state, &Method::Get, "/orders/abc", |_| None).waited(&state.cache);
        assert_eq!(reply.status, 200);
        assert_eq!(reply.content_type, "application/json");
        assert_eq!(reply.body.as_ref(), br#"{"order_uid": "abc"}"#);
        let (status, body) = get(&state, "/orders/nope");
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("order not found"))
        );
        let (status, body) = get(&state, "/orders/a%20b");
        assert_eq!(status, 400);
        assert!(body["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed order_uid"));
        let (status, body) = get(&state, &format!("/orders/{}", "x".repeat(10_000)));
        assert_eq!(status, 400);
        assert_eq!(body["order_uid"], format!("{}…", "x".repeat(128)));
    }

    #[test]
    fn pages_newest_first_with_a_cursor() {
        let state = state_with(&["a", "b", "c"]);
        let (status, body) = get(&state, "/orders?limit=2");
        assert_eq!(status, 200);
        assert_eq!(body["orders"], json!(["c", "b"]));
        let cursor = body["next_cursor"].as_str().unwrap().to_owned();
        let (_, body) = get(&state, &format!("/orders?limit=2&cursor={cursor}"));
        assert_eq!(body["orders"], json!(["a"]));
        assert_eq!(body["next_cursor"], Value::Null);
        for bad in [
            "/orders?limit=0",
            "/orders?limit=1001",
            "/orders?cursor=x",
            "/orders?cursor=+5",
            "/orders?cursor=-",
            "/orders?limit=+5",
            "/orders?x=1",
        ] {
            assert_eq!(get(&state, bad).0, 400, "{bad}");
        }
    }

    #[test]
    fn rejections_check_parameters_and_answer_503_without_postgres() {
        let state = state_with(&[]);
        for bad in [
            "/rejections?limit=0",
            "/rejections?limit=1001",
            "/rejections?cursor=x",
            "/rejections?cursor=+5",
            "/rejections?kind=nope",
            "/rejections?kind=",
            "/rejections?x=1",
        ] {
            let (status, body) = get(&state, bad);
            assert_eq!(status, 400, "{bad}: {body}");
        }
        assert_eq!(get(&state, "/orders?kind=not_json").0, 400);
        // No loader behind this cache: the dead letters may exist, so 503.
        let reply = route(
            &state,
            &Method::Get,
            "/rejections?kind=not_json&limit=5&cursor=-3",
            |_| None,
        )
        .waited(&state.cache);
        assert_eq!(reply.status, 503);
        assert!(reply.headers.contains(&("Retry-After", "1".into())));
        assert_eq!(reply.route.label(), "/rejections");
    }

    #[test]
    fn random_order() {
        assert_eq!(get(&state_with(&[]), "/random-order").0, 404);
        let (status, body) = get(&state_with(&["only"]), "/random-order");
        assert_eq!((status, body["order_uid"].as_str()), (200, Some("only")));
    }

    #[test]
    fn readiness_is_this_pod_and_names_each_dependency() {
        let state = state_with(&[]);
        let (status, body) = get(&state, "/readyz");
        assert_eq!((status, body["cache"].as_str()), (503, Some("loading")));
        assert_eq!(body["postgres"], "unavailable", "{body}");
        assert_eq!(body["postgres_error"], "connecting", "{body}");
        // Loaded: ready, whatever PostgreSQL and NATS say.
        state.cache.mark_loaded();
        let (status, body) = get(&state, "/readyz");
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (
                body["status"].as_str(),
                body["postgres"].as_str(),
                body["nats"].as_str()
            ),
            (Some("ready"), Some("unavailable"), Some("unavailable"))
        );
        let metrics = route(&state, &Method::Get, "/metrics", |_| None).waited(&state.cache);
        let text = std::str::from_utf8(metrics.body.as_ref()).unwrap();
        assert!(text.contains("order_service_ready 1\n"), "{text}");
        assert!(text.contains("order_service_dependency_up{dependency=\"postgres\"} 0\n"));
        state.health.set(Part::Writer, Ok(()));
        state.health.set(Part::Listener, Ok(()));
        state.health.set(Part::Nats, Ok(()));
        let (status, body) = get(&state, "/readyz");
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!({"status": "ready", "cache": "loaded", "postgres": "ok", "nats": "ok"})
        );
        state
            .health
            .set(Part::Listener, Err("connection refused".into()));
        let (status, body) = get(&state, "/readyz");
        assert_eq!(
            (status, body["postgres_error"].as_str()),
            (200, Some("connection refused"))
        );
        let metrics = route(&state, &Method::Get, "/metrics", |_| None).waited(&state.cache);
        let text = std::str::from_utf8(metrics.body.as_ref()).unwrap();
        assert!(text.contains("order_service_dependency_up{dependency=\"postgres\"} 0\n"));
        assert!(text.contains("order_service_dependency_up{dependency=\"nats\"} 1\n"));
        // Draining: 503 at once, so the endpoints drop this pod first.
        let (trigger, shutdown) = crate::lifecycle::shutdown_channel();
        state.health.drain_on(shutdown);
        assert_eq!(get(&state, "/readyz").0, 200);
        trigger.fire();
        let (status, body) = get(&state, "/readyz");
        assert_eq!((status, body["status"].as_str()), (503, Some("draining")));
        let metrics = route(&state, &Method::Get, "/metrics", |_| None).waited(&state.cache);
        let text = std::str::from_utf8(metrics.body.as_ref()).unwrap();
        assert!(text.contains("order_service_ready 0\n"), "{text}");
        assert_eq!(get(&state, "/healthz").0, 200);
    }

    #[test]
    fn the_public_port_hides_the_admin_routes() {
        let state = state_with(&["abc"]);
        let on = |served, url: &str| {
            route_on(served, &state, &Method::Get, url, |_| None)
                .waited(&state.cache)
                .status
        };
        for admin in [
            "/metrics",
            "/orders",
            "/orders/",
            "/orders?limit=1",
            "/random-order",
            "/rejections",
            "/rejections?kind=not_json",
        ] {
            assert_eq!(on(Served::Public, admin), 404, "{admin}");
            assert_ne!(on(Served::All, admin), 404, "{admin}");
        }
        for public in [
            "/orders/abc",
            "/healthz",
            "/openapi.json",
            "/",
            "/favicon.svg",
        ] {
            assert_eq!(
                on(Served::Public, public),
                on(Served::All, public),
                "{public}"
            );
            assert_ne!(on(Served::Public, public), 404, "{public}");
        }
        // Not even a 405 tells an outsider that an admin route exists.
        let post = route_on(Served::Public, &state, &Method::Post, "/metrics", |_| None)
            .waited(&state.cache);
        assert_eq!(post.status, 404);
    }

    #[test]
    fn other_methods_get_405_with_allow() {
        let state = state_with(&[]);
        let reply = route(&state, &Method::Post, "/orders/abc", |_| None).waited(&state.cache);
        assert_eq!(reply.status, 405);
        assert!(reply.headers.contains(&("Allow", "GET, HEAD".into())));
    }

    /// `route`, then `encoding::finish` as a worker does.
    fn finished(state: &HttpState, url: &str, accept: Option<&str>, inm: Option<&str>) -> Reply {
        let reply = route(state, &Method::Get, url, |_| None).waited(&state.cache);
        let cache = crate::http::encoding::GzipCache::new(1 << 20);
        crate::http::encoding::finish(reply, accept, inm, &cache)
    }

    fn header_of(reply: &Reply, name: &str) -> Option<String> {
        reply
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
    }

    #[test]
    fn page_has_security_headers_and_etag() {
        let state = state_with(&[]);
        let reply = finished(&state, "/", None, None);
        assert_eq!(reply.status, 200);
        assert!(reply.content_type.starts_with("text/html"));
        assert!(header_of(&reply, "Content-Security-Policy")
            .unwrap()
            .contains("script-src 'self'"));
        assert_eq!(
            header_of(&reply, "Cache-Control").as_deref(),
            Some("no-cache")
        );
        let etag = header_of(&reply, "ETag").unwrap();
        let cached = finished(&state, "/", None, Some(&etag));
        assert_eq!(cached.status, 304);
        assert!(cached.body.as_ref().is_empty());
        assert_eq!(get(&state, "/nothing-here").0, 404);
    }

    #[test]
    fn found_orders_are_immutable_the_rest_not_stored() {
        let state = state_with(&["abc"]);
        let found = finished(&state, "/orders/abc", None, None);
        assert_eq!(
            header_of(&found, "Cache-Control").as_deref(),
            Some("public, max-age=31536000, immutable")
        );
        assert_eq!(
            header_of(&found, "Vary").as_deref(),
            Some("Accept-Encoding")
        );
        assert!(header_of(&found, "ETag").is_some());
        for url in [
            "/orders/nope",
            "/orders",
            "/random-order",
            "/readyz",
            "/metrics",
            "/healthz",
        ] {
            let reply = finished(&state, url, None, None);
            assert_eq!(
                header_of(&reply, "Cache-Control").as_deref(),
                Some("no-store"),
                "{url}"
            );
            assert_eq!(header_of(&reply, "ETag"), None, "{url}");
        }
    }

    #[test]
    fn test_request_goes_through_tiny_http() {
        let state = state_with(&["abc"]);
        let request: Request = tiny_http::TestRequest::new()
            .with_method(Method::Get)
            .with_path("/orders/abc")
            .into();
        let reply = route(&state, request.method(), request.url(), |_| None).waited(&state.cache);
        assert_eq!(reply.status, 200);
        let response = into_response(reply);
        assert_eq!(response.status_code(), StatusCode(200));
        assert_eq!(
            response.data_length(),
            Some(br#"{"order_uid": "abc"}"#.len())
        );
    }

    #[test]
    fn openapi_document_parses() {
        let doc: Value = serde_json::from_slice(OPENAPI).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        for path in [
            "/orders/{order_uid}",
            "/orders",
            "/random-order",
            "/healthz",
            "/readyz",
            "/metrics",
        ] {
            assert!(
                doc["paths"][path].is_object(),
                "{path} missing from openapi.json"
            );
        }
    }
}
