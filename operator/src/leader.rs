//! Leader election through a `coordination.k8s.io/v1` Lease, so two replicas are safe: only
//! the holder reconciles. Writes use the Lease's resourceVersion, so of two replicas racing for
//! an expired Lease exactly one wins. A leader that fails to renew exits (like
//! controller-runtime), and restarts as a follower.
//!
//! Time follows client-go's rules, so neither a hung request nor clock skew between replicas
//! lets two replicas lead at once: every Lease call has a deadline (kube's client has no read
//! timeout that would end a hung request in time); a leader stops once it has not renewed for
//! [`LeaderSettings::renew_deadline`], counted on its own monotonic clock from when it sent the
//! last renewal that succeeded; and a follower judges another holder's Lease expired only after
//! seeing the same record, unchanged, for a whole lease duration on its own clock, never by
//! comparing the holder's `renewTime` with its wall clock.
//!
//! Hand-written rather than `kube-lease-manager` (0.13 matches kube 5): that crate judges
//! expiry as the holder's `renewTime` plus the duration against the local wall clock, the
//! skew-prone rule this module avoids.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

use crate::{Error, Result};

/// Lease settings.
#[derive(Clone, Debug)]
pub struct LeaderSettings {
    /// Namespace of the Lease (the control plane's).
    pub namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's holderIdentity.
    pub identity: String,
    /// How long the Lease stays ours without a renewal, as other replicas judge it.
    pub lease_duration: Duration,
    /// A Secret in the same namespace that owns the Lease (the chart-owned webhook Secret), so
    /// that `helm uninstall`, which deletes the Secret, also garbage-collects the Lease. Absent
    /// or missing: the Lease has no owner.
    pub owner_secret: Option<String>,
}

impl LeaderSettings {
    /// Renew at a third of the lease duration, as client-go does roughly.
    pub fn renew_every(&self) -> Duration {
        self.lease_duration / 3
    }

    /// A leader that has not renewed for this long stops leading: two thirds of the lease
    /// duration (client-go's 10 s of 15 s), so it stops well before another replica may take
    /// the Lease.
    pub fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }
}

/// What to do with the Lease as it is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No Lease: create it holding it.
    Create,
    /// Ours: renew. Or free/expired: take it over.
    Take,
    /// Someone else holds it and it has not expired.
    Wait,
}

/// The parts of another holder's Lease record that change whenever it renews. Two reads with
/// equal records mean the holder has not renewed in between.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    acquire_time: Option<MicroTime>,
    transitions: Option<i32>,
}

impl Record {
    /// The record of `spec`.
    pub fn of(spec: &LeaseSpec) -> Self {
        Self {
            holder: spec.holder_identity.clone(),
            renew_time: spec.renew_time.clone(),
            acquire_time: spec.acquire_time.clone(),
            transitions: spec.lease_transitions,
        }
    }
}

/// A Lease record and the local instant this replica first saw it. Expiry is judged from that
/// instant on our own monotonic clock, never from the holder's `renewTime`: the holder's wall
/// clock may be ahead of or behind ours (client-go's rule).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// What the Lease said.
    pub record: Record,
    /// When this replica first read it.
    pub since: Instant,
}

/// Remembers when the Lease's record last changed: keeps `previous` when the record is the
/// same, starts a new observation at `now` otherwise. Pure.
pub fn observe(previous: Option<Observed>, spec: &LeaseSpec, now: Instant) -> Observed {
    let record = Record::of(spec);
    match previous {
        Some(p) if p.record == record => p,
        _ => Observed { record, since: now },
    }
}

/// Decides from the Lease's spec and from when this replica first saw that spec (`seen_since`,
/// from [`observe`]). Another holder's Lease has expired once it has stayed unchanged for its
/// whole duration by our clock. Pure.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, seen_since: Instant, now: Instant) -> Decision {
    let Some(spec) = spec else {
        return Decision::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() || holder == me {
        return Decision::Take;
    }
    let seconds = u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(0);
    if now.saturating_duration_since(seen_since) < Duration::from_secs(seconds) {
        Decision::Wait
    } else {
        Decision::Take
    }
}

/// How long this replica may still act as leader, having last renewed successfully with a
/// request sent at `renewed_at`; None once it must stop. Another replica takes over no sooner
/// than a full lease duration after it saw that renewal, and it saw it after we sent it, so
/// stopping at `renew_deadline` (shorter than the lease duration) leaves the difference as a
/// margin for stopping work. Pure.
pub fn time_left(renewed_at: Instant, now: Instant, renew_deadline: Duration) -> Option<Duration> {
    renew_deadline
        .checked_sub(now.saturating_duration_since(renewed_at))
        .filter(|left| !left.is_zero())
}

fn spec_for(s: &LeaderSettings, previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
    let ours = previous.and_then(|p| p.holder_identity.as_deref()) == Some(s.identity.as_str());
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(s.identity.clone()),
        lease_duration_seconds: Some(i32::try_from(s.lease_duration.as_secs()).unwrap_or(15)),
        acquire_time: if ours {
            previous.and_then(|p| p.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if ours { transitions } else { transitions + 1 }),
        ..LeaseSpec::default()
    }
}

/// The owner reference naming `secret`; None while it has no uid (not stored yet).
pub fn owner_reference(secret: &Secret) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: "v1".to_owned(),
        kind: "Secret".to_owned(),
        name: secret.metadata.name.clone()?,
        uid: secret.metadata.uid.clone()?,
        ..OwnerReference::default()
    })
}

/// Looks up the owning Secret when the Lease lacks an owner. Best effort: leadership never
/// waits on it, and a missing Secret (operator run outside the chart) means no owner.
async fn missing_owner(
    api: &Api<Lease>,
    s: &LeaderSettings,
    meta: &ObjectMeta,
) -> Option<OwnerReference> {
    let name = s.owner_secret.as_deref()?;
    if meta
        .owner_references
        .as_ref()
        .is_some_and(|o| !o.is_empty())
    {
        return None;
    }
    let secrets: Api<Secret> = Api::namespaced(api.clone().into_client(), &s.namespace);
    match secrets.get_opt(name).await {
        Ok(secret) => secret.as_ref().and_then(owner_reference),
        Err(e) => {
            tracing::debug!(error = %e, secret = name, "cannot read the Lease's owner Secret");
            None
        }
    }
}

/// One attempt: returns whether we hold the Lease afterwards. `observed` carries what this
/// replica last saw of the Lease between attempts, so expiry is judged by the local clock.
pub async fn try_acquire_or_renew(
    api: &Api<Lease>,
    s: &LeaderSettings,
    observed: &mut Option<Observed>,
) -> Result<bool> {
    let existing = api.get_opt(&s.lease_name).await?;
    let now = Timestamp::now();
    let local_now = Instant::now();
    let spec = existing.as_ref().and_then(|l| l.spec.as_ref());
    let seen_since = match spec {
        Some(spec) => {
            let o = observe(observed.take(), spec, local_now);
            let since = o.since;
            *observed = Some(o);
            since
        }
        None => {
            *observed = None;
            local_now
        }
    };
    let decision = decide(spec, &s.identity, seen_since, local_now);
    let result = match (decision, existing) {
        (Decision::Wait, _) => return Ok(false),
        (Decision::Create, _) => {
            let mut metadata = ObjectMeta {
                name: Some(s.lease_name.clone()),
                ..ObjectMeta::default()
            };
            metadata.owner_references = missing_owner(api, s, &metadata).await.map(|o| vec![o]);
            let lease = Lease {
                metadata,
                spec: Some(spec_for(s, None, now)),
            };
            api.create(&PostParams::default(), &lease).await.map(|_| ())
        }
        (Decision::Take, Some(mut lease)) => {
            lease.spec = Some(spec_for(s, lease.spec.as_ref(), now));
            if let Some(owner) = missing_owner(api, s, &lease.metadata).await {
                lease.metadata.owner_references = Some(vec![owner]);
            }
            api.replace(&s.lease_name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
        (Decision::Take, None) => return Ok(false),
    };
    match result {
        Ok(()) => Ok(true),
        // Conflict or AlreadyExists: another replica wrote first.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// [`try_acquire_or_renew`] bounded by `limit`: kube's client has no read timeout of its own
/// that would end a hung request in time.
async fn attempt(
    api: &Api<Lease>,
    s: &LeaderSettings,
    observed: &mut Option<Observed>,
    limit: Duration,
) -> Result<bool> {
    tokio::time::timeout(limit, try_acquire_or_renew(api, s, observed))
        .await
        .unwrap_or_else(|_| Err(Error::Timeout(format!("lease {}", s.lease_name))))
}

/// Waits until this replica holds the Lease. Returns the instant the successful request was
/// sent, from which [`hold`] counts the renew deadline.
pub async fn acquire(client: kube::Client, s: &LeaderSettings) -> Result<Instant> {
    let api: Api<Lease> = Api::namespaced(client, &s.namespace);
    let mut observed = None;
    loop {
        let sent = Instant::now();
        match attempt(&api, s, &mut observed, s.renew_every()).await {
            Ok(true) => {
                tracing::info!(lease = %s.lease_name, identity = %s.identity, "became leader");
                return Ok(sent);
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
        }
        tokio::time::sleep(s.renew_every()).await;
    }
}

/// Renews until the Lease is taken or no renewal has succeeded within the renew deadline
/// (counted from when the last successful renewal was sent, `renewed_at`); then returns the
/// error. Every renewal is bounded by the time left, so a hung request cannot keep this
/// replica leading after another could take the Lease.
pub async fn hold(client: kube::Client, s: LeaderSettings, renewed_at: Instant) -> Error {
    let api: Api<Lease> = Api::namespaced(client, &s.namespace);
    let mut renewed_at = renewed_at;
    let mut observed = None;
    let mut wait = s.renew_every();
    loop {
        let Some(left) = time_left(renewed_at, Instant::now(), s.renew_deadline()) else {
            return deadline_passed(&s);
        };
        tokio::time::sleep(wait.min(left)).await;
        let sent = Instant::now();
        let Some(left) = time_left(renewed_at, sent, s.renew_deadline()) else {
            return deadline_passed(&s);
        };
        match attempt(&api, &s, &mut observed, left).await {
            Ok(true) => {
                renewed_at = sent;
                wait = s.renew_every();
            }
            Ok(false) => {
                return Error::LeadershipLost(format!(
                    "lease {} taken by another replica",
                    s.lease_name
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease renewal failed");
                // Retry sooner than a regular renewal, still within the deadline.
                wait = s.renew_every() / 3;
            }
        }
    }
}

fn deadline_passed(s: &LeaderSettings) -> Error {
    Error::LeadershipLost(format!(
        "lease {} not renewed within {:?}",
        s.lease_name,
        s.renew_deadline()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("ts")
    }

    fn held_by(who: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(who.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(at(renewed))),
            ..LeaseSpec::default()
        }
    }

    fn settings() -> LeaderSettings {
        LeaderSettings {
            namespace: "ns".into(),
            lease_name: "l".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(15),
            owner_secret: None,
        }
    }

    /// Local monotonic instants, `s` seconds after a fixed origin.
    fn local(origin: Instant, s: u64) -> Instant {
        origin + Duration::from_secs(s)
    }

    #[test]
    fn decisions() {
        let t0 = Instant::now();
        assert_eq!(decide(None, "a", t0, t0), Decision::Create);
        let b = held_by("b", 0);
        assert_eq!(
            decide(Some(&held_by("a", 0)), "a", t0, local(t0, 5)),
            Decision::Take
        );
        assert_eq!(decide(Some(&b), "a", t0, local(t0, 5)), Decision::Wait);
        assert_eq!(decide(Some(&b), "a", t0, local(t0, 16)), Decision::Take);
        assert_eq!(
            decide(Some(&LeaseSpec::default()), "a", t0, t0),
            Decision::Take
        );
    }

    #[test]
    fn expiry_is_judged_by_the_local_clock_not_the_holders_renew_time() {
        let t0 = Instant::now();
        // The holder's clock is an hour behind ours: its renewTime looks stale, but we have
        // only just seen it, so it is not expired.
        let skewed = held_by("b", -3600);
        let seen = observe(None, &skewed, t0);
        assert_eq!(
            decide(Some(&skewed), "a", seen.since, local(t0, 1)),
            Decision::Wait
        );
        // An hour ahead: its renewTime lies in our future, yet once it stays unchanged for
        // the lease duration by our clock, the holder is gone.
        let ahead = held_by("b", 3600);
        let seen = observe(None, &ahead, t0);
        let seen = observe(Some(seen), &ahead, local(t0, 10));
        assert_eq!(
            seen.since, t0,
            "an unchanged record keeps its first sighting"
        );
        assert_eq!(
            decide(Some(&ahead), "a", seen.since, local(t0, 14)),
            Decision::Wait
        );
        assert_eq!(
            decide(Some(&ahead), "a", seen.since, local(t0, 15)),
            Decision::Take
        );
    }

    #[test]
    fn a_renewal_restarts_the_local_expiry_clock() {
        let t0 = Instant::now();
        let seen = observe(None, &held_by("b", 0), t0);
        // Renewed: a new renewTime seen at t0+10 counts from t0+10.
        let seen = observe(Some(seen), &held_by("b", 5), local(t0, 10));
        assert_eq!(seen.since, local(t0, 10));
        assert_eq!(
            decide(Some(&held_by("b", 5)), "a", seen.since, local(t0, 20)),
            Decision::Wait
        );
        assert_eq!(
            decide(Some(&held_by("b", 5)), "a", seen.since, local(t0, 25)),
            Decision::Take
        );
        // A change of holder or of transitions counts as a change too.
        let mut other = held_by("c", 5);
        let seen = observe(Some(seen), &other, local(t0, 30));
        assert_eq!(seen.since, local(t0, 30));
        other.lease_transitions = Some(7);
        let seen = observe(Some(seen), &other, local(t0, 31));
        assert_eq!(seen.since, local(t0, 31));
    }

    #[test]
    fn a_leader_stops_before_another_replica_may_take_over() {
        let s = settings();
        let t0 = Instant::now();
        assert_eq!(s.renew_deadline(), Duration::from_secs(10));
        assert_eq!(
            time_left(t0, local(t0, 4), s.renew_deadline()),
            Some(Duration::from_secs(6))
        );
        // A renewal that hangs past the deadline ends leadership at the deadline, five
        // seconds before the earliest moment another replica could take the Lease (it sees
        // our last renewal no earlier than we sent it, and then waits the lease duration).
        assert_eq!(time_left(t0, local(t0, 10), s.renew_deadline()), None);
        assert_eq!(time_left(t0, local(t0, 60), s.renew_deadline()), None);
        assert!(s.renew_deadline() < s.lease_duration);
    }

    #[test]
    fn transitions_count_only_changes_of_holder() {
        let s = settings();
        let first = spec_for(&s, None, at(0));
        assert_eq!(first.lease_transitions, Some(1));
        let renewed = spec_for(&s, Some(&first), at(5));
        assert_eq!(renewed.lease_transitions, Some(1));
        assert_eq!(renewed.acquire_time, first.acquire_time);
        let stolen = spec_for(&s, Some(&held_by("b", 0)), at(20));
        assert_eq!(stolen.lease_transitions, Some(1));
        assert_eq!(stolen.acquire_time, Some(MicroTime(at(20))));
    }

    #[test]
    fn the_owner_reference_names_a_stored_secret_only() {
        let mut secret = Secret {
            metadata: ObjectMeta {
                name: Some("sidetrace-injector-tls".into()),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        };
        assert_eq!(owner_reference(&secret), None, "no uid yet");
        secret.metadata.uid = Some("1234".into());
        let o = owner_reference(&secret).expect("owner");
        assert_eq!(
            (
                o.api_version.as_str(),
                o.kind.as_str(),
                o.name.as_str(),
                o.uid.as_str()
            ),
            ("v1", "Secret", "sidetrace-injector-tls", "1234")
        );
        // Not a controller reference: the Secret does not manage the Lease, it only scopes it.
        assert_eq!(o.controller, None);
    }
}
