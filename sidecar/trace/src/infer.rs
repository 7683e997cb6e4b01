//! Inferred parents: whole traces for apps that copy no trace headers (opt-in per pod).
//!
//! The proxy serves both sides of its pod in one process, so when the app makes an outbound
//! request without any trace context, it can look at the pod's inbound requests in flight at
//! that instant. The rule ([`decide`]):
//! - headers the app sent (a context, or only a sampling decision) always win: nothing is
//!   inferred;
//! - exactly one inbound request in flight (it started before the outbound request and has
//!   not finished) and it is traced: the outbound request continues its trace, exactly as if
//!   the app had copied the headers that request brought in ([`Parent::Inferred`]);
//! - none, or only one that is not traced (an excluded path, a kubelet probe, an opaque TCP
//!   connection): [`Parent::Absent`], a new trace as without the mode;
//! - more than one: [`Parent::Ambiguous`], a new trace. Never a guess between candidates: a
//!   wrong link misleads more than a missing one.
//!
//! Why "exactly one" is exact: an app's outbound call made on behalf of an inbound request
//! happens while that request is in flight (the app answers after its downstream answered).
//! If only one inbound request is in flight at the instant of the outbound call, it is the
//! cause. The rule is wrong only for calls no inbound request caused (a background job, or
//! work an app keeps doing after it answered) made while exactly one unrelated request is in
//! flight; such apps should not opt in.
//!
//! [`InFlight`] is the set of inbound requests in flight, kept by the proxy for every inbound
//! request whether the mode is on or not (so turning it on by a config reload is exact at
//! once: a request that started before the reload is still counted). It is a map behind one
//! mutex: entering and leaving are one uncontended lock each, and the snapshot an outbound
//! request takes is consistent (count and candidate read together), which a separate atomic
//! count and slot could not guarantee. A map rather than a single slot, so that when two
//! requests overlap and one ends, the one left is known again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use http::HeaderValue;

use crate::id::SpanContext;
use crate::propagation::{Extracted, Formats};

/// Span tag (and OTLP attribute) saying how an outbound span's parent was chosen when the
/// pod infers parents: `inferred`, `ambiguous` or `absent` (see [`Inference`]).
pub const PARENT_TAG: &str = "sidetrace.parent";

/// What the app received on a traced inbound request: what it would have copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The context the proxy forwarded to the app (its span id is the SERVER span's).
    pub context: SpanContext,
    /// The formats that context was written in.
    pub formats: Formats,
    /// The request's `x-request-id`, which the seed apps copy along with the context.
    pub request_id: Option<HeaderValue>,
}

/// The inbound requests in flight at one instant, as [`decide`] needs them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Snapshot {
    /// None in flight.
    Empty,
    /// Exactly one; `None` when it is not traced.
    One(Option<Candidate>),
    /// This many (at least two).
    Many(usize),
}

/// How an outbound request's parent was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parent {
    /// The app sent trace context (or a sampling decision) itself: nothing inferred.
    Propagated,
    /// The only inbound request in flight: continue its trace.
    Inferred(Candidate),
    /// Several inbound requests in flight: no link, a new trace.
    Ambiguous,
    /// No traced inbound request in flight: a new trace.
    Absent,
}

/// The outcome of [`decide`] as the span tag and the proxy's metric label carry it (no
/// outcome is recorded for [`Parent::Propagated`]: those spans are exactly today's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Inference {
    /// See [`Parent::Inferred`].
    Inferred,
    /// See [`Parent::Ambiguous`].
    Ambiguous,
    /// See [`Parent::Absent`].
    Absent,
}

impl Inference {
    /// Every outcome, in the order the proxy renders them.
    pub const ALL: [Self; 3] = [Self::Inferred, Self::Ambiguous, Self::Absent];

    /// The value of [`PARENT_TAG`] and of the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inferred => "inferred",
            Self::Ambiguous => "ambiguous",
            Self::Absent => "absent",
        }
    }
}

impl Parent {
    /// The recorded outcome; `None` for [`Parent::Propagated`].
    pub fn inference(&self) -> Option<Inference> {
        match self {
            Self::Propagated => None,
            Self::Inferred(_) => Some(Inference::Inferred),
            Self::Ambiguous => Some(Inference::Ambiguous),
            Self::Absent => Some(Inference::Absent),
        }
    }
}

/// Whether the app put trace context of its own on the request: a context, or a bare
/// sampling decision (`b3: 0`, `x-b3-sampled`). Malformed context the app sent does not
/// count: it is dropped either way.
pub fn app_sent_context(own: &Extracted) -> bool {
    own.context.is_some() || own.sampled.is_some() || own.debug
}

/// The parent of an outbound request, from what the app sent (`own`) and the pod's inbound
/// requests in flight at this instant. `in_flight` is called only when the app sent no
/// context, so a request that carries headers costs nothing more.
pub fn decide(own: &Extracted, in_flight: impl FnOnce() -> Snapshot) -> Parent {
    if app_sent_context(own) {
        return Parent::Propagated;
    }
    match in_flight() {
        Snapshot::One(Some(candidate)) => Parent::Inferred(candidate),
        Snapshot::Empty | Snapshot::One(None) => Parent::Absent,
        Snapshot::Many(_) => Parent::Ambiguous,
    }
}

#[derive(Debug, Default)]
struct Entries {
    next: u64,
    live: HashMap<u64, Option<Candidate>>,
}

/// The pod's inbound requests in flight (see the module docs). Shared by every connection.
#[derive(Debug, Default)]
pub struct InFlight {
    entries: Mutex<Entries>,
}

/// One inbound request (or opaque inbound connection) in flight; it leaves the set when
/// dropped, however the exchange ends.
#[derive(Debug)]
pub struct InFlightGuard {
    set: Arc<InFlight>,
    id: u64,
}

impl InFlight {
    /// A shared, empty set.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // The critical sections cannot panic half-way; a poisoned lock still holds a
        // consistent map.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds an inbound request: `Some` with what the app receives when it is traced, `None`
    /// for work the proxy cannot attribute (untraced requests, opaque connections).
    pub fn enter(self: &Arc<Self>, candidate: Option<Candidate>) -> InFlightGuard {
        let mut e = self.lock();
        let id = e.next;
        e.next = e.next.wrapping_add(1);
        e.live.insert(id, candidate);
        InFlightGuard {
            set: Arc::clone(self),
            id,
        }
    }

    /// The requests in flight now.
    pub fn snapshot(&self) -> Snapshot {
        let e = self.lock();
        match e.live.len() {
            0 => Snapshot::Empty,
            1 => Snapshot::One(e.live.values().next().cloned().flatten()),
            n => Snapshot::Many(n),
        }
    }

    /// How many are in flight.
    pub fn len(&self) -> usize {
        self.lock().live.len()
    }

    /// Whether none is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.set.lock().live.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{SpanId, TraceId};
    use crate::propagation::extract;
    use http::HeaderMap;
    use sidetrace_contract::PropagationFormat;

    fn candidate(n: u64) -> Candidate {
        Candidate {
            context: SpanContext {
                trace_id: TraceId::from_u128(u128::from(n) << 64 | 7).expect("id"),
                span_id: SpanId::from_u64(n).expect("id"),
                parent_id: None,
                sampled: Some(true),
                debug: false,
            },
            formats: Formats::NONE.with(PropagationFormat::B3Multi),
            request_id: None,
        }
    }

    fn own(pairs: &[(&'static str, &'static str)]) -> Extracted {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        extract(&h)
    }

    #[test]
    fn exactly_one_traced_request_in_flight_is_the_parent() {
        let set = InFlight::new();
        let _a = set.enter(Some(candidate(1)));
        assert_eq!(
            decide(&own(&[]), || set.snapshot()),
            Parent::Inferred(candidate(1))
        );
    }

    #[test]
    fn none_or_an_untraced_one_is_absent_and_several_are_ambiguous() {
        let set = InFlight::new();
        assert_eq!(decide(&own(&[]), || set.snapshot()), Parent::Absent);
        let probe = set.enter(None);
        assert_eq!(decide(&own(&[]), || set.snapshot()), Parent::Absent);
        let a = set.enter(Some(candidate(1)));
        assert_eq!(decide(&own(&[]), || set.snapshot()), Parent::Ambiguous);
        let _b = set.enter(Some(candidate(2)));
        assert_eq!(set.snapshot(), Snapshot::Many(3));
        assert_eq!(decide(&own(&[]), || set.snapshot()), Parent::Ambiguous);
        // When the others end, the one left is known again.
        drop(probe);
        drop(a);
        assert_eq!(
            decide(&own(&[]), || set.snapshot()),
            Parent::Inferred(candidate(2))
        );
    }

    #[test]
    fn headers_the_app_sent_always_win_and_skip_the_snapshot() {
        for sent in [
            own(&[
                ("x-b3-traceid", "463ac35c9f6413ad"),
                ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ]),
            own(&[("b3", "0")]),
            own(&[("x-b3-flags", "1")]),
            own(&[(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )]),
        ] {
            let parent = decide(&sent, || panic!("no snapshot when the app sent context"));
            assert_eq!(parent, Parent::Propagated, "{sent:?}");
            assert_eq!(parent.inference(), None);
        }
        // Malformed context is dropped either way, so it does not stop the inference.
        let malformed = own(&[("b3", "not-a-context")]);
        assert!(malformed.malformed);
        assert_eq!(
            decide(&malformed, || Snapshot::One(Some(candidate(3)))),
            Parent::Inferred(candidate(3))
        );
    }

    #[test]
    fn guards_leave_the_set_however_they_are_dropped() {
        let set = InFlight::new();
        let guards: Vec<_> = (0..100)
            .map(|n| set.enter(Some(candidate(n + 1))))
            .collect();
        assert_eq!(set.len(), 100);
        drop(guards);
        assert!(set.is_empty());
        assert_eq!(set.snapshot(), Snapshot::Empty);
    }

    /// Property: under any interleaving of requests entering and leaving across threads, an
    /// inferred parent is always a request that was in flight at the instant of the decision
    /// and the only one. Each thread's request registers, takes decisions while it is in
    /// flight (as its app's outbound calls would), then leaves; a decision naming any other
    /// request is a wrong link.
    #[test]
    fn concurrent_requests_are_never_linked_to_another() {
        let set = InFlight::new();
        let wrong = std::sync::atomic::AtomicU64::new(0);
        let linked = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let set = &set;
                let wrong = &wrong;
                let linked = &linked;
                s.spawn(move || {
                    for r in 0..2_000u64 {
                        let me = candidate(t * 1_000_000 + r + 1);
                        let _guard = set.enter(Some(me.clone()));
                        for _ in 0..3 {
                            match decide(&Extracted::default(), || set.snapshot()) {
                                Parent::Inferred(c) if c == me => {
                                    linked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                                Parent::Inferred(_) => {
                                    wrong.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                                Parent::Ambiguous => {}
                                other => panic!("own request in flight, got {other:?}"),
                            }
                        }
                    }
                });
            }
        });
        assert_eq!(wrong.into_inner(), 0, "no decision names another request");
        assert!(set.is_empty());
        // Linked decisions happen whenever a thread ran alone; not asserted (scheduling).
        let _ = linked.into_inner();
    }
}
