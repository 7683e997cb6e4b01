//! The injector webhook's TLS: a CA, a serving certificate for the injector Service's DNS
//! names, the Secret that holds them and the caBundle of the MutatingWebhookConfiguration.
//!
//! Rotation never leaves a window where the apiserver and the webhook disagree:
//! 1. a new CA is added to the trusted bundle *beside* the old one, while the webhook keeps
//!    serving its old certificate (still trusted);
//! 2. once the bundle carrying both CAs has been published for `overlap`, the serving
//!    certificate is re-issued by the new CA;
//! 3. the old CA leaves the bundle only after that.
//!
//! [`plan`] decides, from the stored state and the clock, which step is due; [`apply_plan`]
//! does the cryptography (rcgen). The Kubernetes reads and writes live in [`run`].

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use sidetrace_contract::names;

use crate::{Error, Result};

/// Secret data keys (tls.crt/tls.key are what the injector mounts).
pub mod keys {
    pub const TLS_CERT: &str = "tls.crt";
    pub const TLS_KEY: &str = "tls.key";
    /// Every CA the webhook configuration trusts right now (PEM, current first).
    pub const CA_BUNDLE: &str = "ca.crt";
    pub const CA_CERT: &str = "ca-current.crt";
    pub const CA_KEY: &str = "ca-current.key";
}

/// Secret annotations recording what the certificates are (so nothing parses X.509).
pub mod annotations {
    pub const CA_NOT_AFTER: &str = "sidetrace.dev/ca-not-after";
    pub const CERT_NOT_AFTER: &str = "sidetrace.dev/cert-not-after";
    pub const CERT_SANS: &str = "sidetrace.dev/cert-sans";
    /// `current` when the serving cert is signed by the current CA, else `previous`.
    pub const CERT_ISSUER: &str = "sidetrace.dev/cert-issuer";
    /// When the bundle last changed; step 2 waits `overlap` after it.
    pub const BUNDLE_CHANGED_AT: &str = "sidetrace.dev/bundle-changed-at";
}

const CA_COMMON_NAME: &str = "sidetrace-webhook-ca";

/// Lifetimes and names, from the operator's flags.
#[derive(Clone, Debug)]
pub struct CertSettings {
    pub ca_lifetime: Duration,
    pub cert_lifetime: Duration,
    /// Rotate when less than this is left.
    pub rotate_before: Duration,
    /// How long a changed bundle is published before the serving cert moves to the new CA.
    pub overlap: Duration,
    /// DNS names / IPs in the serving certificate.
    pub sans: Vec<String>,
}

/// What the Secret holds, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertState {
    pub ca_cert: String,
    pub ca_key: String,
    pub ca_bundle: String,
    pub ca_not_after: Option<Timestamp>,
    pub cert: String,
    pub key: String,
    pub cert_not_after: Option<Timestamp>,
    pub cert_sans: Vec<String>,
    pub cert_by_current_ca: bool,
    pub bundle_changed_at: Option<Timestamp>,
}

/// The step that is due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing stored (or unreadable): make a CA and a serving cert.
    Bootstrap,
    /// The CA nears expiry: add a new CA beside the old one.
    AddNewCa,
    /// The bundle with the new CA is published long enough: re-issue the serving cert from it.
    ReissueFromNewCa,
    /// The serving cert nears expiry or its names changed: re-issue from the current CA.
    ReissueServing,
    /// The serving cert is from the current CA and the overlap passed: drop old CAs.
    DropOldCa,
    /// All good.
    Keep,
}

fn near(expiry: Option<Timestamp>, now: Timestamp, before: Duration) -> bool {
    let before = SignedDuration::try_from(before).unwrap_or(SignedDuration::MAX);
    expiry.is_none_or(|t| t.as_second() - now.as_second() < before.as_secs())
}

fn overlap_passed(state: &CertState, now: Timestamp, overlap: Duration) -> bool {
    state
        .bundle_changed_at
        .is_none_or(|t| now.as_second() - t.as_second() >= overlap.as_secs() as i64)
}

/// Decides the next step. Pure.
pub fn plan(state: Option<&CertState>, settings: &CertSettings, now: Timestamp) -> Plan {
    let Some(s) = state else {
        return Plan::Bootstrap;
    };
    if s.ca_cert.is_empty() || s.ca_key.is_empty() || s.cert.is_empty() || s.key.is_empty() {
        return Plan::Bootstrap;
    }
    if !s.cert_by_current_ca {
        return if overlap_passed(s, now, settings.overlap) {
            Plan::ReissueFromNewCa
        } else {
            Plan::Keep
        };
    }
    if near(s.ca_not_after, now, settings.rotate_before) {
        return Plan::AddNewCa;
    }
    if near(s.cert_not_after, now, settings.rotate_before) || s.cert_sans != settings.sans {
        return Plan::ReissueServing;
    }
    if s.ca_bundle.trim() != s.ca_cert.trim() && overlap_passed(s, now, settings.overlap) {
        return Plan::DropOldCa;
    }
    Plan::Keep
}

fn certificate_error(e: impl std::fmt::Display) -> Error {
    Error::Certificate(e.to_string())
}

fn offset(now: Timestamp, d: Duration) -> Result<(time::OffsetDateTime, Timestamp)> {
    let not_after = now
        .checked_add(SignedDuration::try_from(d).map_err(certificate_error)?)
        .map_err(certificate_error)?;
    let odt = time::OffsetDateTime::from_unix_timestamp(not_after.as_second())
        .map_err(certificate_error)?;
    Ok((odt, not_after))
}

fn not_before(now: Timestamp) -> Result<time::OffsetDateTime> {
    // An hour of slack for clock skew between the operator and the apiserver.
    time::OffsetDateTime::from_unix_timestamp(now.as_second() - 3600).map_err(certificate_error)
}

fn ca_params(now: Timestamp, lifetime: Duration) -> Result<(CertificateParams, Timestamp)> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "sidetrace");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = not_before(now)?;
    let (odt, ts) = offset(now, lifetime)?;
    params.not_after = odt;
    Ok((params, ts))
}

fn new_ca(now: Timestamp, lifetime: Duration) -> Result<(String, String, Timestamp)> {
    let key = KeyPair::generate().map_err(certificate_error)?;
    let (params, not_after) = ca_params(now, lifetime)?;
    let cert = params.self_signed(&key).map_err(certificate_error)?;
    Ok((cert.pem(), key.serialize_pem(), not_after))
}

fn issue_serving(
    state: &CertState,
    settings: &CertSettings,
    now: Timestamp,
) -> Result<(String, String, Timestamp)> {
    let ca_key = KeyPair::from_pem(&state.ca_key).map_err(certificate_error)?;
    // The issuer needs only the CA's name, key usages and key; rebuilding them avoids parsing
    // the stored certificate (and an X.509 parser dependency).
    let (ca, _) = ca_params(now, settings.ca_lifetime)?;
    let issuer = Issuer::new(ca, ca_key);
    let mut params = CertificateParams::new(settings.sans.clone()).map_err(certificate_error)?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        settings
            .sans
            .first()
            .cloned()
            .unwrap_or_else(|| "sidetrace-injector".into()),
    );
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.not_before = not_before(now)?;
    let (odt, not_after) = offset(now, settings.cert_lifetime)?;
    params.not_after = odt;
    let key = KeyPair::generate().map_err(certificate_error)?;
    let cert = params.signed_by(&key, &issuer).map_err(certificate_error)?;
    Ok((cert.pem(), key.serialize_pem(), not_after))
}

/// Carries out `plan` on `state`, returning the new state (`None` for [`Plan::Keep`]).
pub fn apply_plan(
    plan: &Plan,
    state: Option<&CertState>,
    settings: &CertSettings,
    now: Timestamp,
) -> Result<Option<CertState>> {
    let mut s = state.cloned().unwrap_or_default();
    match plan {
        Plan::Keep => return Ok(None),
        Plan::Bootstrap => {
            let (ca_cert, ca_key, ca_not_after) = new_ca(now, settings.ca_lifetime)?;
            s = CertState {
                ca_bundle: ca_cert.clone(),
                ca_cert,
                ca_key,
                ca_not_after: Some(ca_not_after),
                ..CertState::default()
            };
            let (cert, key, not_after) = issue_serving(&s, settings, now)?;
            s.cert = cert;
            s.key = key;
            s.cert_not_after = Some(not_after);
            s.cert_sans = settings.sans.clone();
            s.cert_by_current_ca = true;
            s.bundle_changed_at = Some(now);
        }
        Plan::AddNewCa => {
            let (ca_cert, ca_key, ca_not_after) = new_ca(now, settings.ca_lifetime)?;
            s.ca_bundle = format!("{}{}", ca_cert, s.ca_cert);
            s.ca_cert = ca_cert;
            s.ca_key = ca_key;
            s.ca_not_after = Some(ca_not_after);
            s.cert_by_current_ca = false;
            s.bundle_changed_at = Some(now);
        }
        Plan::ReissueFromNewCa | Plan::ReissueServing => {
            let (cert, key, not_after) = issue_serving(&s, settings, now)?;
            s.cert = cert;
            s.key = key;
            s.cert_not_after = Some(not_after);
            s.cert_sans = settings.sans.clone();
            s.cert_by_current_ca = true;
            if *plan == Plan::ReissueFromNewCa {
                // The old CA stays trusted for another overlap, for webhooks that still serve
                // the old cert until they reload their files.
                s.bundle_changed_at = Some(now);
            }
        }
        Plan::DropOldCa => {
            s.ca_bundle = s.ca_cert.clone();
            s.bundle_changed_at = Some(now);
        }
    }
    Ok(Some(s))
}

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> String {
    data.get(key)
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default()
}

fn ts(annotations: &BTreeMap<String, String>, key: &str) -> Option<Timestamp> {
    annotations.get(key).and_then(|v| v.parse().ok())
}

/// Decodes the Secret into the state (missing fields decode empty, and plan bootstraps).
pub fn state_from_secret(secret: &Secret) -> CertState {
    let empty = BTreeMap::new();
    let no_annotations = BTreeMap::new();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let ann = secret
        .metadata
        .annotations
        .as_ref()
        .unwrap_or(&no_annotations);
    CertState {
        ca_cert: text(data, keys::CA_CERT),
        ca_key: text(data, keys::CA_KEY),
        ca_bundle: text(data, keys::CA_BUNDLE),
        ca_not_after: ts(ann, annotations::CA_NOT_AFTER),
        cert: text(data, keys::TLS_CERT),
        key: text(data, keys::TLS_KEY),
        cert_not_after: ts(ann, annotations::CERT_NOT_AFTER),
        cert_sans: ann
            .get(annotations::CERT_SANS)
            .map(|v| {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        cert_by_current_ca: ann.get(annotations::CERT_ISSUER).map(String::as_str)
            == Some("current"),
        bundle_changed_at: ts(ann, annotations::BUNDLE_CHANGED_AT),
    }
}

/// Encodes the state as the Secret (type kubernetes.io/tls, so the injector mounts it as is).
pub fn secret_from_state(name: &str, namespace: &str, s: &CertState) -> Secret {
    let b = |v: &str| ByteString(v.as_bytes().to_vec());
    let opt = |t: Option<Timestamp>| t.map(|t| t.to_string()).unwrap_or_default();
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                names::MANAGED_BY_LABEL.to_owned(),
                names::MANAGED_BY_VALUE.to_owned(),
            )])),
            annotations: Some(BTreeMap::from([
                (annotations::CA_NOT_AFTER.to_owned(), opt(s.ca_not_after)),
                (
                    annotations::CERT_NOT_AFTER.to_owned(),
                    opt(s.cert_not_after),
                ),
                (annotations::CERT_SANS.to_owned(), s.cert_sans.join(",")),
                (
                    annotations::CERT_ISSUER.to_owned(),
                    if s.cert_by_current_ca {
                        "current"
                    } else {
                        "previous"
                    }
                    .to_owned(),
                ),
                (
                    annotations::BUNDLE_CHANGED_AT.to_owned(),
                    opt(s.bundle_changed_at),
                ),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(BTreeMap::from([
            (keys::TLS_CERT.to_owned(), b(&s.cert)),
            (keys::TLS_KEY.to_owned(), b(&s.key)),
            (keys::CA_BUNDLE.to_owned(), b(&s.ca_bundle)),
            (keys::CA_CERT.to_owned(), b(&s.ca_cert)),
            (keys::CA_KEY.to_owned(), b(&s.ca_key)),
        ])),
        ..Secret::default()
    }
}

/// Where the TLS lives in the cluster.
#[derive(Clone, Debug)]
pub struct CertTargets {
    pub secret_name: String,
    pub namespace: String,
    /// MutatingWebhookConfiguration whose caBundle is kept in sync; empty to skip.
    pub webhook_configuration: String,
}

/// One pass: read the Secret, carry out the due step, write the Secret, then sync caBundle.
/// Returns the plan carried out.
pub async fn sync_once(
    client: &kube::Client,
    targets: &CertTargets,
    settings: &CertSettings,
) -> Result<Plan> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &targets.namespace);
    let existing = secrets.get_opt(&targets.secret_name).await?;
    let state = existing.as_ref().map(state_from_secret);
    let now = Timestamp::now();
    let step = plan(state.as_ref(), settings, now);
    let next = apply_plan(&step, state.as_ref(), settings, now)?;
    let current = match next {
        Some(next) => {
            let secret = secret_from_state(&targets.secret_name, &targets.namespace, &next);
            match existing {
                // Replace with the resourceVersion read: two writers cannot both rotate.
                Some(old) => {
                    let mut secret = secret;
                    // Keep labels and annotations others set (Helm owns the object when the
                    // chart creates it empty); ours override theirs.
                    let mut labels = old.metadata.labels.unwrap_or_default();
                    labels.extend(secret.metadata.labels.take().unwrap_or_default());
                    let mut notes = old.metadata.annotations.unwrap_or_default();
                    notes.extend(secret.metadata.annotations.take().unwrap_or_default());
                    secret.metadata.labels = Some(labels);
                    secret.metadata.annotations = Some(notes);
                    secret.metadata.resource_version = old.metadata.resource_version;
                    secrets
                        .replace(&targets.secret_name, &PostParams::default(), &secret)
                        .await?;
                }
                None => {
                    secrets.create(&PostParams::default(), &secret).await?;
                }
            }
            tracing::info!(secret = %targets.secret_name, step = ?step, "webhook certificates updated");
            next
        }
        None => state.unwrap_or_default(),
    };
    if !targets.webhook_configuration.is_empty() {
        sync_ca_bundle(client, &targets.webhook_configuration, &current.ca_bundle).await?;
    }
    Ok(step)
}

/// Sets `caBundle` on every webhook of the configuration when it differs.
pub async fn sync_ca_bundle(client: &kube::Client, name: &str, bundle_pem: &str) -> Result<bool> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(mwc) = api.get_opt(name).await? else {
        tracing::warn!(
            webhook_configuration = name,
            "MutatingWebhookConfiguration not found; caBundle not synced"
        );
        return Ok(false);
    };
    let want = ByteString(bundle_pem.as_bytes().to_vec());
    let webhooks = mwc.webhooks.unwrap_or_default();
    if webhooks
        .iter()
        .all(|w| w.client_config.ca_bundle.as_ref() == Some(&want))
    {
        return Ok(false);
    }
    let ops: Vec<serde_json::Value> = webhooks
        .iter()
        .enumerate()
        .map(|(i, _)| serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": want}))
        .collect();
    let mut patch = vec![
        serde_json::json!({"op": "test", "path": "/metadata/resourceVersion", "value": mwc.metadata.resource_version}),
    ];
    patch.extend(ops);
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(patch)).map_err(certificate_error)?;
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await?;
    tracing::info!(webhook_configuration = name, "caBundle synced");
    Ok(true)
}

/// Runs [`sync_once`] every `interval` until the future is dropped.
pub async fn run(
    client: kube::Client,
    targets: CertTargets,
    settings: CertSettings,
    interval: Duration,
) {
    loop {
        if let Err(e) = sync_once(&client, &targets, &settings).await {
            tracing::warn!(error = %e, "webhook certificate sync failed; retrying");
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CertSettings {
        CertSettings {
            ca_lifetime: Duration::from_secs(365 * 86400),
            cert_lifetime: Duration::from_secs(30 * 86400),
            rotate_before: Duration::from_secs(7 * 86400),
            overlap: Duration::from_secs(600),
            sans: vec![
                "sidetrace-injector.sidetrace-system.svc".into(),
                "10.250.250.1".into(),
            ],
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("ts")
    }

    fn step(state: &CertState, now: Timestamp) -> (Plan, CertState) {
        let p = plan(Some(state), &settings(), now);
        let next = apply_plan(&p, Some(state), &settings(), now)
            .expect("crypto")
            .unwrap_or_else(|| state.clone());
        (p, next)
    }

    #[test]
    fn bootstrap_then_keep() {
        assert_eq!(plan(None, &settings(), at(0)), Plan::Bootstrap);
        let s = apply_plan(&Plan::Bootstrap, None, &settings(), at(0))
            .expect("ok")
            .expect("state");
        assert!(s.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(s.ca_bundle, s.ca_cert);
        assert_eq!(plan(Some(&s), &settings(), at(60)), Plan::Keep);
        // The round trip through a Secret keeps everything.
        let back = state_from_secret(&secret_from_state("n", "ns", &s));
        assert_eq!(back, s);
    }

    #[test]
    fn ca_rotation_never_leaves_the_serving_cert_untrusted() {
        let mut s = apply_plan(&Plan::Bootstrap, None, &settings(), at(0))
            .expect("ok")
            .expect("state");
        let old_ca = s.ca_cert.clone();
        // Just before the CA's end: add a new CA beside the old one.
        let late = at(365 * 86400 - 3 * 86400);
        // The serving cert was renewed along the way; the CA is what nears expiry now.
        s.cert_not_after = Some(at(400 * 86400));
        let (p, s1) = step(&s, late);
        assert_eq!(p, Plan::AddNewCa);
        assert!(s1.ca_bundle.contains(&old_ca) && s1.ca_bundle.contains(&s1.ca_cert));
        assert_eq!(
            s1.cert, s.cert,
            "serving cert stays until the bundle is published"
        );
        // Within the overlap nothing moves.
        let (p, _) = step(
            &s1,
            Timestamp::from_second(late.as_second() + 60).expect("ts"),
        );
        assert_eq!(p, Plan::Keep);
        // After it, the serving cert moves to the new CA; both CAs stay trusted.
        let later = Timestamp::from_second(late.as_second() + 700).expect("ts");
        let (p, s2) = step(&s1, later);
        assert_eq!(p, Plan::ReissueFromNewCa);
        assert_ne!(s2.cert, s.cert);
        assert!(s2.ca_bundle.contains(&old_ca));
        // Then the old CA leaves.
        let (p, s3) = step(
            &s2,
            Timestamp::from_second(later.as_second() + 700).expect("ts"),
        );
        assert_eq!(p, Plan::DropOldCa);
        assert!(!s3.ca_bundle.contains(&old_ca));
        assert_eq!(s3.ca_bundle, s3.ca_cert);
    }

    #[test]
    fn serving_cert_renews_before_expiry_and_when_names_change() {
        let s = apply_plan(&Plan::Bootstrap, None, &settings(), at(0))
            .expect("ok")
            .expect("state");
        assert_eq!(
            plan(Some(&s), &settings(), at(24 * 86400)),
            Plan::ReissueServing
        );
        let mut other = settings();
        other.sans.push("extra.example".into());
        assert_eq!(plan(Some(&s), &other, at(60)), Plan::ReissueServing);
    }
}
