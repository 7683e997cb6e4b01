//! Head sampling: whether a hop's trace is recorded, and why.
//!
//! [`decide`] is a pure function over plain values; the proxy supplies the draw (the trace
//! id's lower bits when callers are trusted, so every hop of a trace agrees; a random number
//! when they are not, so a caller cannot pick a trace id that forces recording) and the
//! [`TokenBucket`] behind `maxTracesPerSecond`, which only traces decided here draw from.
//!
//! Order: a trusted caller's debug flag, then its sampled flag, decide; otherwise the
//! operation's rate (else the service-wide rate) decides, and a "yes" must also get a token.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use sidetrace_contract::OperationSampling;

/// Why a hop was (or was not) sampled: the `reason` label of the proxy's decision counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The rate (the operation's or the service's) decided a trace started or left undecided
    /// by the caller.
    Rate,
    /// The rate said yes but `maxTracesPerSecond` had no token left: not sampled.
    Limit,
    /// A trusted caller said sampled.
    ParentSampled,
    /// A trusted caller said not sampled.
    ParentUnsampled,
    /// A trusted caller set the debug flag.
    Debug,
    /// The caller's decision was ignored (`ignoreIncomingSampling`) and the rate decided.
    Untrusted,
}

impl Reason {
    /// Every reason, in the order they are rendered.
    pub const ALL: [Self; 6] = [
        Self::Rate,
        Self::Limit,
        Self::ParentSampled,
        Self::ParentUnsampled,
        Self::Debug,
        Self::Untrusted,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Rate => "rate",
            Self::Limit => "limit",
            Self::ParentSampled => "parent_sampled",
            Self::ParentUnsampled => "parent_unsampled",
            Self::Debug => "debug",
            Self::Untrusted => "untrusted",
        }
    }

    /// Position in [`Reason::ALL`].
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// A sampling decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the hop's span is recorded.
    pub sampled: bool,
    /// Why.
    pub reason: Reason,
}

/// The sampling decision the request arrived with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Incoming {
    /// `x-b3-sampled`, `b3`'s flag or the `traceparent` flag; `None` when undecided.
    pub sampled: Option<bool>,
    /// `x-b3-flags: 1` or `b3`'s `d`.
    pub debug: bool,
}

/// The sampling settings of one proxy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy<'a> {
    /// Probability in 0..=1 for operations without a rate of their own.
    pub rate: f64,
    /// Rates of single operations (span names).
    pub operations: &'a [OperationSampling],
    /// Follow callers' decisions (false: `ignoreIncomingSampling`).
    pub trust_incoming: bool,
}

impl Policy<'_> {
    /// The rate for new traces of `operation`.
    pub fn rate_for(&self, operation: &str) -> f64 {
        self.operations
            .iter()
            .find(|o| o.name == operation)
            .map_or(self.rate, |o| o.rate)
    }
}

/// Whether `draw` (uniform over u64) falls under `rate`: `draw < rate * 2^64`.
pub fn under_rate(draw: u64, rate: f64) -> bool {
    // NaN compares false with everything: "never".
    if rate.is_nan() || rate <= 0.0 {
        return false;
    }
    if rate >= 1.0 {
        return true;
    }
    // The cast saturates; rate < 1 keeps it below 2^64.
    draw < (rate * 18_446_744_073_709_551_616.0) as u64
}

/// Decides one hop. `take_token` is asked only when the rate says yes (so unsampled traffic
/// never spends the limit).
pub fn decide(
    policy: &Policy<'_>,
    incoming: Incoming,
    operation: &str,
    draw: u64,
    take_token: impl FnOnce() -> bool,
) -> Decision {
    let had_decision = incoming.debug || incoming.sampled.is_some();
    if policy.trust_incoming {
        if incoming.debug {
            return Decision {
                sampled: true,
                reason: Reason::Debug,
            };
        }
        if let Some(sampled) = incoming.sampled {
            let reason = if sampled {
                Reason::ParentSampled
            } else {
                Reason::ParentUnsampled
            };
            return Decision { sampled, reason };
        }
    }
    let by_rate = if had_decision {
        Reason::Untrusted
    } else {
        Reason::Rate
    };
    if !under_rate(draw, policy.rate_for(operation)) {
        return Decision {
            sampled: false,
            reason: by_rate,
        };
    }
    if take_token() {
        Decision {
            sampled: true,
            reason: by_rate,
        }
    } else {
        Decision {
            sampled: false,
            reason: Reason::Limit,
        }
    }
}

/// A token bucket of new traces: `per_second` tokens a second, holding at most one second's
/// worth (at least one token), full at the start.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBucket {
    per_second: f64,
    capacity: f64,
    tokens: f64,
    /// Seconds (on the caller's monotonic clock) of the last refill.
    last: f64,
}

impl TokenBucket {
    /// A full bucket at time `now` (seconds on a monotonic clock).
    pub fn new(per_second: f64, now: f64) -> Self {
        let capacity = per_second.max(1.0);
        Self {
            per_second,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    /// Takes a token at time `now` if there is one, after adding what the time since the last
    /// call earned. A clock that steps back earns nothing.
    pub fn try_take(&mut self, now: f64) -> bool {
        let earned = (now - self.last).max(0.0) * self.per_second;
        self.tokens = (self.tokens + earned).min(self.capacity);
        self.last = self.last.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Tokens a second.
    pub fn per_second(&self) -> f64 {
        self.per_second
    }
}

/// The proxy's shared [`TokenBucket`] on the process's monotonic clock.
#[derive(Debug)]
pub struct TraceLimiter {
    origin: Instant,
    bucket: Mutex<TokenBucket>,
}

impl TraceLimiter {
    /// A full limiter of `per_second` new traces a second.
    pub fn new(per_second: f64) -> Self {
        Self {
            origin: Instant::now(),
            bucket: Mutex::new(TokenBucket::new(per_second, 0.0)),
        }
    }

    /// Takes a token now, if there is one.
    pub fn try_take(&self) -> bool {
        let now = self.origin.elapsed().as_secs_f64();
        self.bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .try_take(now)
    }

    /// Tokens a second.
    pub fn per_second(&self) -> f64 {
        self.bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .per_second()
    }
}

impl PartialEq for TraceLimiter {
    /// Compares the configuration (the rate), not the tokens left.
    fn eq(&self, other: &Self) -> bool {
        self.per_second() == other.per_second()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn policy(rate: f64, trust: bool) -> Policy<'static> {
        static CHECK_STOCK: std::sync::LazyLock<[OperationSampling; 1]> =
            std::sync::LazyLock::new(|| {
                [OperationSampling {
                    name: "checkStock".into(),
                    rate: 1.0,
                }]
            });
        Policy {
            rate,
            operations: &*CHECK_STOCK,
            trust_incoming: trust,
        }
    }

    const UNDECIDED: Incoming = Incoming {
        sampled: None,
        debug: false,
    };

    #[test]
    fn trusted_callers_decide_and_debug_wins() {
        let p = policy(0.0, true);
        let never = || panic!("a caller's decision takes no token");
        for (incoming, want) in [
            (
                Incoming {
                    sampled: Some(true),
                    debug: false,
                },
                (true, Reason::ParentSampled),
            ),
            (
                Incoming {
                    sampled: Some(false),
                    debug: false,
                },
                (false, Reason::ParentUnsampled),
            ),
            (
                Incoming {
                    sampled: Some(false),
                    debug: true,
                },
                (true, Reason::Debug),
            ),
        ] {
            let d = decide(&p, incoming, "x", 0, never);
            assert_eq!((d.sampled, d.reason), want, "{incoming:?}");
        }
    }

    #[test]
    fn untrusted_callers_cannot_force_or_veto_recording() {
        let forced = Incoming {
            sampled: Some(true),
            debug: true,
        };
        let d = decide(&policy(0.0, false), forced, "x", 0, || true);
        assert_eq!((d.sampled, d.reason), (false, Reason::Untrusted));
        let vetoed = Incoming {
            sampled: Some(false),
            debug: false,
        };
        let d = decide(&policy(1.0, false), vetoed, "x", u64::MAX, || true);
        assert_eq!((d.sampled, d.reason), (true, Reason::Untrusted));
        let d = decide(&policy(1.0, false), UNDECIDED, "x", 7, || true);
        assert_eq!(d.reason, Reason::Rate, "nothing arrived: plain rate");
    }

    #[test]
    fn an_operation_rate_overrides_the_service_rate() {
        let p = policy(0.0, true);
        assert!(decide(&p, UNDECIDED, "checkStock", u64::MAX, || true).sampled);
        assert!(!decide(&p, UNDECIDED, "GET /", 0, || true).sampled);
        assert_eq!(p.rate_for("other"), 0.0);
    }

    #[test]
    fn seeded_draws_sample_about_the_rate() {
        let mut rng = StdRng::seed_from_u64(19);
        let p = policy(0.25, true);
        let sampled = (0..10_000)
            .filter(|_| decide(&p, UNDECIDED, "GET /", rng.random(), || true).sampled)
            .count();
        // Binomial(10000, 0.25): sd ≈ 43; the seed makes the count fixed, the band says why.
        assert!((2_300..2_700).contains(&sampled), "{sampled}");
    }

    #[test]
    fn the_limit_turns_a_yes_into_no_and_is_only_asked_on_yes() {
        let p = policy(1.0, true);
        let d = decide(&p, UNDECIDED, "GET /", 0, || false);
        assert_eq!((d.sampled, d.reason), (false, Reason::Limit));
        let p0 = policy(0.0, true);
        let d = decide(&p0, UNDECIDED, "GET /", 0, || panic!("no token for a no"));
        assert_eq!((d.sampled, d.reason), (false, Reason::Rate));
    }

    #[test]
    fn the_bucket_holds_one_second_and_refills_at_its_rate() {
        let mut b = TokenBucket::new(2.0, 0.0);
        assert!(b.try_take(0.0) && b.try_take(0.0));
        assert!(!b.try_take(0.0), "two tokens: one second's worth");
        assert!(!b.try_take(0.4));
        assert!(b.try_take(0.5), "one token earned after half a second");
        assert!(!b.try_take(0.1), "a clock stepping back earns nothing");
        assert!(b.try_take(100.0) && b.try_take(100.0) && !b.try_take(100.0));
        let mut slow = TokenBucket::new(0.01, 0.0);
        assert!(slow.try_take(0.0), "at least one token");
        assert!(!slow.try_take(50.0));
        assert!(slow.try_take(100.0));
    }

    #[test]
    fn every_reason_has_its_own_label_and_index() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let labels: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), Reason::ALL.len());
    }
}
