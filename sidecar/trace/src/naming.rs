//! Bounded default span names.
//!
//! A tracing backend keeps one entry per (service, span name): Jaeger's operation list, Zipkin's
//! span-name index. A name built from the raw path (`GET /orders/81723`) makes one entry per id,
//! which bloats the backend and buries the real operations. Two defences, both applied only to
//! default names (names from operation rules are bounded by the config already):
//! - [`route_template`] collapses path segments that look like identifiers to `{id}`;
//! - a per-proxy [`NameBudget`] admits at most [`MAX_DEFAULT_NAMES`] distinct default names;
//!   later new names become `<METHOD> {other}` ([`overflow_name`]) and are counted.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{PoisonError, RwLock};

/// How many distinct default span names one proxy process gives out before it names further
/// new ones `<METHOD> {other}`.
///
/// Why 200: a service's real operations are its routes × methods, plus, outbound, the hosts
/// and routes it calls — tens for a typical microservice, rarely more than a hundred even for a
/// wide REST API, so real names fit with room to spare. Past a few hundred entries Jaeger's
/// operation drop-down stops being usable, and something unbounded (ids the template does not
/// recognise, scanners probing random paths) is at work rather than real routes. The cost stays
/// small: at most 200 names of at most 128 bytes, about 26 KiB per proxy.
pub const MAX_DEFAULT_NAMES: usize = 200;

/// Replaces an identifier-like path segment.
pub const ID_PLACEHOLDER: &str = "{id}";

/// Shortest segment of letters and digits taken for a token id (see [`route_template`]).
/// 16 is the length of a 64-bit id in hex; real words and route names are shorter.
pub const MIN_TOKEN_ID_LEN: usize = 16;

/// The route template of a path (query string already removed): every `/`-separated segment
/// that looks like an identifier becomes `{id}`; every other byte is kept as it is. Borrows,
/// without allocating, when no segment changes.
///
/// A segment is an identifier when it is one of:
/// - all ASCII digits, any length: `81723`, `0`;
/// - a UUID in its 8-4-4-4-12 hex form, any case: `123e4567-e89b-12d3-a456-426614174000`;
/// - at least [`MIN_TOKEN_ID_LEN`] ASCII letters and digits that are all hex digits or include
///   at least one digit: hashes and object ids (`507f1f77bcf86cd799439011`), ULIDs and
///   base62 ids (`01ARZ3NDEKTSV4RRFFQ69G5FAV`).
///
/// So words (`orders`, `internationalization`), short codes (`v2`, `en-GB`) and anything with
/// other punctuation (`report-2024.pdf`, `a_b`) stay. The price of the last rule is that a rare
/// long static segment with a digit (`oauth2callbackhandler`) is collapsed too: a less specific
/// name, while `http.path` still carries the real path.
pub fn route_template(path: &str) -> Cow<'_, str> {
    if !path.split('/').any(is_id_segment) {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(if is_id_segment(segment) {
            ID_PLACEHOLDER
        } else {
            segment
        });
    }
    Cow::Owned(out)
}

fn is_id_segment(segment: &str) -> bool {
    let b = segment.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b.iter().all(u8::is_ascii_digit) || is_uuid(b) {
        return true;
    }
    b.len() >= MIN_TOKEN_ID_LEN
        && b.iter().all(u8::is_ascii_alphanumeric)
        && (b.iter().any(u8::is_ascii_digit) || b.iter().all(u8::is_ascii_hexdigit))
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The name given once the budget is spent: `<METHOD> {other}` for the methods of RFC 9110 and
/// PATCH, `HTTP {other}` for any other method (OpenTelemetry's rule for unknown methods), so
/// the overflow names are a fixed, small set too.
pub fn overflow_name(method: &str) -> &'static str {
    match method {
        "GET" => "GET {other}",
        "HEAD" => "HEAD {other}",
        "POST" => "POST {other}",
        "PUT" => "PUT {other}",
        "DELETE" => "DELETE {other}",
        "CONNECT" => "CONNECT {other}",
        "OPTIONS" => "OPTIONS {other}",
        "TRACE" => "TRACE {other}",
        "PATCH" => "PATCH {other}",
        _ => "HTTP {other}",
    }
}

/// The distinct default span names one proxy has given out, and how many it refused.
///
/// Owned by the proxy (shared through [`crate::TracerConfig`] behind an `Arc` and carried over
/// config reloads), not a global, so tests and several tracers in one process do not share it.
/// The hot path is a read lock and one hash lookup; the write lock is taken only to insert a
/// name seen for the first time, at most `cap` times in the life of the budget.
pub struct NameBudget {
    cap: usize,
    names: RwLock<HashSet<String>>,
    overflow: AtomicU64,
}

impl NameBudget {
    /// A budget of `cap` distinct names.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            names: RwLock::new(HashSet::new()),
            overflow: AtomicU64::new(0),
        }
    }

    /// Whether `name` may be used: it was admitted before, or there is room and it is now.
    /// A refusal is counted in [`NameBudget::overflow_total`].
    pub fn admit(&self, name: &str) -> bool {
        {
            let names = self.names.read().unwrap_or_else(PoisonError::into_inner);
            if names.contains(name) {
                return true;
            }
            if names.len() >= self.cap {
                self.overflow.fetch_add(1, Relaxed);
                return false;
            }
        }
        let mut names = self.names.write().unwrap_or_else(PoisonError::into_inner);
        // Another request may have filled the last slot, or added this name, meanwhile.
        if names.len() < self.cap || names.contains(name) {
            names.insert(name.to_owned());
            true
        } else {
            self.overflow.fetch_add(1, Relaxed);
            false
        }
    }

    /// The budget's size.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Distinct names admitted so far.
    pub fn len(&self) -> usize {
        self.names
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no name has been admitted yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Default names refused because the budget was spent (each refused span counts once).
    pub fn overflow_total(&self) -> u64 {
        self.overflow.load(Relaxed)
    }
}

impl Default for NameBudget {
    /// A budget of [`MAX_DEFAULT_NAMES`].
    fn default() -> Self {
        Self::new(MAX_DEFAULT_NAMES)
    }
}

impl std::fmt::Debug for NameBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The names themselves are runtime state, up to `cap` of them: not worth printing.
        f.debug_struct("NameBudget")
            .field("cap", &self.cap)
            .field("len", &self.len())
            .field("overflow", &self.overflow_total())
            .finish()
    }
}

impl PartialEq for NameBudget {
    /// Compares the configuration (the cap), not the names seen so far: two tracer configs
    /// built from the same file are equal whatever traffic each has named.
    fn eq(&self, other: &Self) -> bool {
        self.cap == other.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_segments_become_id() {
        assert_eq!(route_template("/orders/81723"), "/orders/{id}");
        assert_eq!(
            route_template("/users/7/orders/81723/items"),
            "/users/{id}/orders/{id}/items"
        );
        assert_eq!(route_template("/0"), "/{id}");
    }

    #[test]
    fn uuid_segments_become_id() {
        for uuid in [
            "123e4567-e89b-12d3-a456-426614174000",
            "123E4567-E89B-12D3-A456-426614174000",
        ] {
            assert_eq!(
                route_template(&format!("/carts/{uuid}/checkout")),
                "/carts/{id}/checkout"
            );
        }
        // Not the 8-4-4-4-12 shape, and not a token (it has dashes): kept.
        assert_eq!(
            route_template("/x/123e4567-e89b-12d3"),
            "/x/123e4567-e89b-12d3"
        );
    }

    #[test]
    fn long_hex_and_token_segments_become_id() {
        assert_eq!(
            route_template("/objects/507f1f77bcf86cd799439011"),
            "/objects/{id}"
        );
        assert_eq!(route_template("/blobs/abcdefabcdefabcd"), "/blobs/{id}");
        assert_eq!(
            route_template("/sha/da39a3ee5e6b4b0d3255bfef95601890afd80709"),
            "/sha/{id}"
        );
        assert_eq!(
            route_template("/events/01ARZ3NDEKTSV4RRFFQ69G5FAV"),
            "/events/{id}"
        );
        // 15 hex digits: below the token length, and not all digits.
        assert_eq!(route_template("/h/abcdef012345678"), "/h/abcdef012345678");
    }

    #[test]
    fn words_codes_and_punctuated_segments_are_kept_without_allocating() {
        for path in [
            "/",
            "",
            "/trace",
            "/api/v2/orders",
            "/internationalization",
            "/lang/en-GB",
            "/reports/report-2024.pdf",
            "/grpc.Checkout/Pay",
            "/a//b/",
            "/under_score_1234567890",
        ] {
            assert!(
                matches!(route_template(path), Cow::Borrowed(p) if p == path),
                "{path}"
            );
        }
    }

    #[test]
    fn empty_segments_and_slashes_are_preserved() {
        assert_eq!(route_template("/orders/42/"), "/orders/{id}/");
        assert_eq!(route_template("//42"), "//{id}");
        assert_eq!(route_template("42"), "{id}");
    }

    #[test]
    fn the_budget_admits_known_names_and_counts_refusals() {
        let b = NameBudget::new(2);
        assert!(b.is_empty());
        assert!(b.admit("GET /a"));
        assert!(b.admit("GET /b"));
        assert!(b.admit("GET /a"), "a known name is always admitted");
        assert_eq!(b.overflow_total(), 0);
        assert!(!b.admit("GET /c"));
        assert!(!b.admit("GET /c"));
        assert_eq!(b.overflow_total(), 2, "each refused span counts");
        assert_eq!(b.len(), 2);
        assert!(b.admit("GET /b"));
        assert_eq!(NameBudget::default().cap(), MAX_DEFAULT_NAMES);
    }

    #[test]
    fn the_budget_holds_under_concurrent_admission() {
        let b = std::sync::Arc::new(NameBudget::new(50));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let b = std::sync::Arc::clone(&b);
                std::thread::spawn(move || {
                    (0..100)
                        .filter(|i| b.admit(&format!("GET /{}", (i * 7 + t) % 100)))
                        .count()
                })
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().expect("thread")).sum();
        assert_eq!(b.len(), 50);
        assert_eq!(admitted as u64 + b.overflow_total(), 400);
    }

    #[test]
    fn overflow_names_are_a_fixed_set() {
        assert_eq!(overflow_name("GET"), "GET {other}");
        assert_eq!(overflow_name("PATCH"), "PATCH {other}");
        assert_eq!(overflow_name("BREW"), "HTTP {other}");
        assert_eq!(
            overflow_name("get"),
            "HTTP {other}",
            "methods are case-sensitive"
        );
    }
}
