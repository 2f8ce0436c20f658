//! What HTTP caches and clients expect of a body (issue 12): a strong ETag
//! derived from the bytes, `If-None-Match` → 304, `Cache-Control`, and gzip
//! negotiated as RFC 9110 says, each body compressed once.
//!
//! `finish` runs after `route`, on every reply: a route only says how its
//! answer may be cached (`Caching`), so routes stay unaware of encodings.
//!
//! Memory: the cache holds every order's JSON and must stay within
//! 1.3× the JSON + 64 MiB, so a gzip copy of every order is out. An order is
//! compressed on its first gzip request and kept in `GzipCache`, a fixed
//! byte budget (`GZIP_BUDGET`) with CLOCK eviction: the hot set stays
//! compressed, a cold order is compressed again when asked for again.

use super::routes::{Body, Reply};
use flate2::{Compression, GzBuilder};
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// Bytes of gzip bodies kept (the compressed bodies themselves, plus a
/// fixed overhead per entry).
pub const GZIP_BUDGET: usize = 32 << 20;
/// Bookkeeping per kept body: map slot, ring slot, Arc header.
const ENTRY_OVERHEAD: usize = 96;

/// How a reply may be cached: decided by its route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caching {
    /// Nothing may be stored: lists, probes, metrics, errors.
    NoStore,
    /// A found order: it never changes once stored.
    Immutable,
    /// The page, its assets, the OpenAPI document: they change with a
    /// release, so caches revalidate (cheap: a 304).
    Revalidate,
}

impl Caching {
    pub fn header(self) -> &'static str {
        match self {
            Caching::NoStore => "no-store",
            Caching::Immutable => "public, max-age=31536000, immutable",
            Caching::Revalidate => "no-cache",
        }
    }

    /// Whether the reply has an ETag and a gzip representation.
    pub fn is_validated(self) -> bool {
        self != Caching::NoStore
    }
}

/// The content coding chosen for a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
}

/// Picks gzip or identity from `Accept-Encoding` (RFC 9110 §12.5.3): no
/// field means no preference (identity: no client asked for gzip); each
/// coding has a q-value (1 if absent, 0 = not acceptable); `*` stands for
/// any coding not listed; identity is acceptable unless `identity;q=0`, or
/// `*;q=0` without an `identity` entry; unlisted, it ranks below any
/// listed coding. gzip wins a tie (smaller, same bytes). When neither is acceptable the answer is identity anyway (RFC
/// 9110 lets a server send an unlisted coding rather than fail).
pub fn negotiate(accept_encoding: Option<&str>) -> Coding {
    let Some(field) = accept_encoding else {
        return Coding::Identity;
    };
    let (mut gzip, mut identity, mut star) = (None, None, None);
    for item in field.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        if coding.is_empty() {
            continue;
        }
        let mut q = 1.0f32;
        for param in parts {
            if let Some((name, value)) = param.split_once('=') {
                if name.trim().eq_ignore_ascii_case("q") {
                    // A malformed q-value makes the entry unacceptable.
                    q = value.trim().parse().unwrap_or(0.0);
                    if !(0.0..=1.0).contains(&q) {
                        q = 0.0;
                    }
                }
            }
        }
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(gzip.map_or(q, |g: f32| g.max(q)));
        } else if coding.eq_ignore_ascii_case("identity") {
            identity = Some(q);
        } else if coding == "*" {
            star = Some(q);
        }
    }
    let gzip = gzip.or(star).unwrap_or(0.0);
    // Unlisted (and no `*`), identity is acceptable but not preferred: a
    // client that lists gzip at any weight is sent gzip.
    let identity = identity.or(star).unwrap_or(f32::MIN_POSITIVE);
    if gzip > 0.0 && gzip >= identity {
        Coding::Gzip
    } else {
        Coding::Identity
    }
}

/// The strong validator of a body: a hash of its bytes, so every replica
/// sends the same one for the same bytes. 128 bits: the hash also keys the
/// gzip cache, where a collision would serve another body.
pub fn digest(bytes: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(bytes)
}

/// The ETag of one representation: the identity bytes' digest, with `-gz`
/// for the gzip one (derived from the same bytes, so a 304 never needs a
/// compression).
pub fn etag(digest: u128, coding: Coding) -> String {
    // By hand: `format!("{digest:032x}")` was a tenth of a request's own
    // instructions (callgrind).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut tag = String::with_capacity(38);
    tag.push('"');
    for shift in (0..32).rev() {
        tag.push(HEX[(digest >> (shift * 4)) as usize & 15] as char);
    }
    if coding == Coding::Gzip {
        tag.push_str("-gz");
    }
    tag.push('"');
    tag
}

/// `If-None-Match` against the selected representation's ETag (RFC 9110
/// §13.1.2: `*` matches any current representation; a list matches if any
/// member does, under weak comparison, so `W/` is ignored).
pub fn none_match(if_none_match: &str, etag: &str) -> bool {
    if_none_match.trim() == "*"
        || if_none_match
            .split(',')
            .map(|tag| tag.trim())
            .map(|tag| tag.strip_prefix("W/").unwrap_or(tag))
            .any(|tag| tag == etag)
}

/// gzip of `bytes`, deterministic (no name, mtime 0), so every replica
/// sends the same compressed bytes.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzBuilder::new().mtime(0).write(
        Vec::with_capacity(bytes.len() / 2 + 64),
        Compression::new(6),
    );
    encoder
        .write_all(bytes)
        .and_then(|()| encoder.try_finish())
        .expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

struct Entry {
    /// Empty when gzip would not be smaller: identity is sent instead.
    body: Arc<[u8]>,
    referenced: AtomicBool,
}

static SHARED: OnceLock<GzipCache> = OnceLock::new();

/// Compressed bodies by the digest of their identity bytes, within a byte
/// budget. Lookups take a read lock and mark the entry referenced; an
/// insertion over budget evicts by CLOCK: the ring's oldest entry goes,
/// unless it was read since it was last looked at, when it gets another
/// round.
pub struct GzipCache {
    budget: usize,
    entries: RwLock<HashMap<u128, Entry>>,
    ring: Mutex<VecDeque<u128>>,
    bytes: AtomicUsize,
}

impl GzipCache {
    pub fn new(budget: usize) -> GzipCache {
        GzipCache {
            budget,
            entries: RwLock::new(HashMap::new()),
            ring: Mutex::new(VecDeque::new()),
            bytes: AtomicUsize::new(0),
        }
    }

    /// The process's cache, for the HTTP workers of every socket: within
    /// `GZIP_BUDGET`, or what `limit_shared` set before the first request.
    pub fn shared() -> &'static GzipCache {
        SHARED.get_or_init(|| GzipCache::new(GZIP_BUDGET))
    }

    /// Holds the shared cache to `bytes` (when below `GZIP_BUDGET`); to be
    /// called before any request. With a small order budget the gzip copies
    /// must not outweigh it (`CACHE_MAX_BYTES`: an eighth of it).
    pub fn limit_shared(bytes: usize) {
        let _ = SHARED.set(GzipCache::new(bytes.min(GZIP_BUDGET)));
    }

    /// The gzip body for `identity` (whose digest is `digest`), compressed
    /// now if it is not kept; `None` when gzip is not smaller.
    pub fn get(&self, digest: u128, identity: &[u8]) -> Option<Arc<[u8]>> {
        let kept = {
            let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
            entries.get(&digest).map(|entry| {
                entry.referenced.store(true, Relaxed);
                entry.body.clone()
            })
        };
        let body = kept.unwrap_or_else(|| self.insert(digest, identity));
        (!body.is_empty()).then_some(body)
    }

    /// Bytes held now (bodies and per-entry overhead).
    pub fn bytes(&self) -> usize {
        self.bytes.load(Relaxed)
    }

    fn insert(&self, digest: u128, identity: &[u8]) -> Arc<[u8]> {
        let compressed = gzip(identity);
        let body: Arc<[u8]> = if compressed.len() < identity.len() {
            compressed.into()
        } else {
            Arc::from(&[][..])
        };
        let cost = body.len() + ENTRY_OVERHEAD;
        if cost > self.budget {
            return body;
        }
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.contains_key(&digest) {
            return body; // Another worker compressed it meanwhile.
        }
        while self.bytes.load(Relaxed) + cost > self.budget {
            let Some(oldest) = ring.pop_front() else {
                break;
            };
            let second_chance = entries
                .get(&oldest)
                .is_some_and(|e| e.referenced.swap(false, Relaxed));
            if second_chance {
                ring.push_back(oldest);
            } else if let Some(gone) = entries.remove(&oldest) {
                self.bytes
                    .fetch_sub(gone.body.len() + ENTRY_OVERHEAD, Relaxed);
            }
        }
        entries.insert(
            digest,
            Entry {
                body: body.clone(),
                referenced: AtomicBool::new(false),
            },
        );
        ring.push_back(digest);
        self.bytes.fetch_add(cost, Relaxed);
        body
    }
}

/// Settles a routed reply's caching headers and coding: `Cache-Control`
/// from its `Caching`; for a validated 200, `Vary`, the ETag of the
/// representation chosen from `Accept-Encoding` (gzip from `cache`), and a
/// 304 without a body when `If-None-Match` matches it. HEAD needs nothing
/// here: tiny_http sends a HEAD's head as GET's and leaves out the body.
pub(super) fn finish(
    mut reply: Reply,
    accept_encoding: Option<&str>,
    if_none_match: Option<&str>,
    cache: &GzipCache,
) -> Reply {
    reply
        .headers
        .push(("Cache-Control", reply.caching.header().into()));
    if !reply.caching.is_validated() || reply.status != 200 {
        return reply;
    }
    reply.headers.push(("Vary", "Accept-Encoding".into()));
    let identity = reply.body.as_ref();
    let digest = digest(identity);
    let gzipped = match negotiate(accept_encoding) {
        Coding::Gzip => cache.get(digest, identity),
        Coding::Identity => None,
    };
    let coding = if gzipped.is_some() {
        Coding::Gzip
    } else {
        Coding::Identity
    };
    let etag = etag(digest, coding);
    let matched = if_none_match.is_some_and(|field| none_match(field, &etag));
    reply.headers.push(("ETag", etag.into()));
    if matched {
        // RFC 9110 §15.4.5: the validators and caching fields a 200 would
        // carry, no body, no representation metadata. Content-Length is 0,
        // not the 200's: http_parser-based clients (wrk among them) wait
        // for that many body bytes after a 304, and caches never take a
        // 304's Content-Length (RFC 9111 §4.3.4).
        reply.status = 304;
        reply.content_type = "";
        reply.body = Body::Static(b"");
        return reply;
    }
    if let Some(gzipped) = gzipped {
        reply.headers.push(("Content-Encoding", "gzip".into()));
        reply.body = Body::Shared(gzipped);
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn accept_encoding_as_rfc_9110_says() {
        use Coding::{Gzip, Identity};
        for (field, expected) in [
            (None, Identity),
            (Some(""), Identity),
            (Some("gzip"), Gzip),
            (Some("GZIP"), Gzip),
            (Some("x-gzip"), Gzip),
            (Some("deflate, gzip;q=1.0, *;q=0.5"), Gzip),
            (Some("gzip;q=0"), Identity),
            (Some("gzip; q=0.000"), Identity),
            (Some("br"), Identity),
            (Some("*"), Gzip),
            (Some("*;q=0"), Identity),
            (Some("*;q=0, gzip"), Gzip),
            (Some("gzip;q=0, *"), Identity),
            (Some("identity;q=1, gzip;q=0.5"), Identity),
            (Some("identity;q=0.5, gzip;q=0.8"), Gzip),
            (Some("identity;q=0"), Identity),
            (Some("identity;q=0, gzip;q=0.1"), Gzip),
            (Some("gzip;q=2"), Identity),
            (Some("gzip;q=abc"), Identity),
            (Some(" , gzip ;q=0.3 ,"), Gzip),
        ] {
            assert_eq!(negotiate(field), expected, "{field:?}");
        }
    }

    #[test]
    fn etags_are_strong_per_representation_and_lists_match() {
        let d = digest(b"{\"a\":1}");
        assert_eq!(d, digest(b"{\"a\":1}"));
        let plain = etag(d, Coding::Identity);
        let gz = etag(d, Coding::Gzip);
        assert_ne!(plain, gz);
        assert!(plain.starts_with('"') && plain.ends_with('"') && !plain.starts_with("W/"));
        assert_eq!(plain, format!("\"{d:032x}\""));
        assert_eq!(gz, format!("\"{d:032x}-gz\""));
        assert!(none_match(&plain, &plain));
        assert!(none_match("*", &plain));
        assert!(none_match(&format!("\"x\", W/{gz} , {plain}"), &plain));
        assert!(!none_match(&gz, &plain));
        assert!(!none_match("\"x\", \"y\"", &plain));
    }

    #[test]
    fn gzip_is_deterministic_and_round_trips() {
        let body = br#"{"order_uid":"abc","items":[1,2,3,4,5,6,7,8,9]}"#.repeat(20);
        let once = gzip(&body);
        assert_eq!(once, gzip(&body));
        assert!(once.len() < body.len());
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&once[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, body);
    }

    #[test]
    fn the_cache_keeps_the_hot_set_within_its_budget() {
        let bodies: Vec<Vec<u8>> = (0..200)
            .map(|i| format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(2000)).into_bytes())
            .collect();
        let one = gzip(&bodies[0]).len() + ENTRY_OVERHEAD;
        let cache = GzipCache::new(one * 20);
        let hot = &bodies[0];
        let d = digest(hot);
        let first = cache.get(d, hot).unwrap();
        for body in &bodies[1..] {
            cache.get(digest(body), body).unwrap();
            assert!(cache.bytes() <= one * 20, "{} over budget", cache.bytes());
            // The hot body is read between every cold one.
            assert!(Arc::ptr_eq(&first, &cache.get(d, hot).unwrap()));
        }
        // A body gzip does not shrink is sent as it is.
        assert!(cache.get(digest(b"{}"), b"{}").is_none());
    }
}
