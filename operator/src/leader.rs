//! Leader election through a `coordination.k8s.io/v1` Lease, so two replicas are safe: only
//! the holder reconciles. Writes use the Lease's resourceVersion, so of two replicas racing for
//! an expired Lease exactly one wins. A leader that fails to renew exits (like
//! controller-runtime), and restarts as a follower.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

use crate::{Error, Result};

/// Lease settings.
#[derive(Clone, Debug)]
pub struct LeaderSettings {
    pub namespace: String,
    pub lease_name: String,
    pub identity: String,
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

/// Decides from the Lease's spec. Pure.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() || holder == me {
        return Decision::Take;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0.as_second());
    match renewed {
        Some(t) if now.as_second() - t < duration => Decision::Wait,
        _ => Decision::Take,
    }
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

/// One attempt: returns whether we hold the Lease afterwards.
pub async fn try_acquire_or_renew(api: &Api<Lease>, s: &LeaderSettings) -> Result<bool> {
    let now = Timestamp::now();
    let existing = api.get_opt(&s.lease_name).await?;
    let decision = decide(
        existing.as_ref().and_then(|l| l.spec.as_ref()),
        &s.identity,
        now,
    );
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

/// Waits until this replica holds the Lease.
pub async fn acquire(client: kube::Client, s: &LeaderSettings) -> Result<()> {
    let api: Api<Lease> = Api::namespaced(client, &s.namespace);
    loop {
        match try_acquire_or_renew(&api, s).await {
            Ok(true) => {
                tracing::info!(lease = %s.lease_name, identity = %s.identity, "became leader");
                return Ok(());
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
        }
        tokio::time::sleep(s.renew_every()).await;
    }
}

/// Renews until a renewal fails for longer than the lease duration; then returns the error.
pub async fn hold(client: kube::Client, s: LeaderSettings) -> Error {
    let api: Api<Lease> = Api::namespaced(client, &s.namespace);
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(s.renew_every()).await;
        match try_acquire_or_renew(&api, &s).await {
            Ok(true) => last_ok = tokio::time::Instant::now(),
            Ok(false) => {
                return Error::LeadershipLost(format!(
                    "lease {} taken by another replica",
                    s.lease_name
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease renewal failed");
                if last_ok.elapsed() >= s.lease_duration {
                    return Error::LeadershipLost(format!(
                        "could not renew lease {}: {e}",
                        s.lease_name
                    ));
                }
            }
        }
    }
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

    #[test]
    fn decisions() {
        assert_eq!(decide(None, "a", at(0)), Decision::Create);
        assert_eq!(decide(Some(&held_by("a", 0)), "a", at(5)), Decision::Take);
        assert_eq!(decide(Some(&held_by("b", 0)), "a", at(5)), Decision::Wait);
        assert_eq!(decide(Some(&held_by("b", 0)), "a", at(16)), Decision::Take);
        assert_eq!(
            decide(Some(&LeaseSpec::default()), "a", at(0)),
            Decision::Take
        );
    }

    #[test]
    fn transitions_count_only_changes_of_holder() {
        let s = LeaderSettings {
            namespace: "ns".into(),
            lease_name: "l".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(15),
            owner_secret: None,
        };
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
