//! The pod's owning workload as OpenTelemetry resource attributes.
//!
//! The webhook sees the pod's owner references at admission; the proxy only sees its
//! environment. This module is the rule both sides share: which attributes an owner yields
//! ([`workload_attributes`]) and the text form the webhook passes in
//! [`crate::names::env::WORKLOAD_ATTRIBUTES`] ([`format_attributes`] / [`parse_attributes`]).

/// The pod label the ReplicaSet controller sets to the hash suffix of the ReplicaSet's name.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// Attributes for a pod whose controlling owner is `kind`/`name` (OpenTelemetry's
/// `k8s.*.name` conventions):
/// - ReplicaSet `shop-7c9d8` → `k8s.replicaset.name=shop-7c9d8` and, when the name ends in
///   `-<pod-template-hash>` (the pod's label, else a suffix in the alphabet Kubernetes
///   writes hashes in), `k8s.deployment.name=shop`;
/// - StatefulSet, DaemonSet → `k8s.statefulset.name` / `k8s.daemonset.name`;
/// - Job `report-29123456` → `k8s.job.name` and, when the suffix is the CronJob
///   controller's scheduled-minute number (8 or more digits), `k8s.cronjob.name=report`;
/// - anything else (a bare pod, a custom controller) → nothing: no guess is better than a
///   wrong workload.
pub fn workload_attributes(
    kind: &str,
    name: &str,
    pod_template_hash: Option<&str>,
) -> Vec<(&'static str, String)> {
    if name.is_empty() {
        return Vec::new();
    }
    match kind {
        "ReplicaSet" => {
            let mut out = vec![("k8s.replicaset.name", name.to_owned())];
            let deployment = match pod_template_hash.filter(|h| !h.is_empty()) {
                Some(hash) => name.strip_suffix(hash).and_then(|n| n.strip_suffix('-')),
                None => name
                    .rsplit_once('-')
                    .filter(|(_, h)| is_k8s_hash(h))
                    .map(|(n, _)| n),
            };
            if let Some(d) = deployment.filter(|d| !d.is_empty()) {
                out.push(("k8s.deployment.name", d.to_owned()));
            }
            out
        }
        "StatefulSet" => vec![("k8s.statefulset.name", name.to_owned())],
        "DaemonSet" => vec![("k8s.daemonset.name", name.to_owned())],
        "Job" => {
            let mut out = vec![("k8s.job.name", name.to_owned())];
            if let Some((cron, minutes)) = name.rsplit_once('-')
                && minutes.len() >= 8
                && minutes.bytes().all(|b| b.is_ascii_digit())
                && !cron.is_empty()
            {
                out.push(("k8s.cronjob.name", cron.to_owned()));
            }
            out
        }
        _ => Vec::new(),
    }
}

/// Whether `s` looks like a hash Kubernetes wrote (`rand.SafeEncodeString`: no vowels, no
/// look-alike characters).
fn is_k8s_hash(s: &str) -> bool {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (4..=10).contains(&s.len()) && s.bytes().all(|b| ALPHABET.contains(&b))
}

/// `key=value` pairs joined by commas. Kubernetes names carry neither `,` nor `=`.
pub fn format_attributes(attrs: &[(&str, String)]) -> String {
    attrs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The inverse of [`format_attributes`]; pairs without `=` or with an empty side are skipped
/// (the proxy never refuses to start over a resource attribute).
pub fn parse_attributes(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let (k, v) = (k.trim(), v.trim());
            (!k.is_empty() && !v.is_empty()).then(|| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(kind: &str, name: &str, hash: Option<&str>) -> String {
        format_attributes(&workload_attributes(kind, name, hash))
    }

    #[test]
    fn replica_set_pods_name_their_deployment() {
        assert_eq!(
            attrs("ReplicaSet", "shop-frontend-7c9d8f6b5", Some("7c9d8f6b5")),
            "k8s.replicaset.name=shop-frontend-7c9d8f6b5,k8s.deployment.name=shop-frontend"
        );
        // Without the label, a suffix in Kubernetes' hash alphabet is taken as the hash.
        assert_eq!(
            attrs("ReplicaSet", "shop-7c9d8", None),
            "k8s.replicaset.name=shop-7c9d8,k8s.deployment.name=shop"
        );
        // A ReplicaSet made by hand: its name does not end in a hash, no deployment.
        assert_eq!(
            attrs("ReplicaSet", "my-replicas", None),
            "k8s.replicaset.name=my-replicas"
        );
        // The label wins over the alphabet guess, and a mismatch yields no deployment.
        assert_eq!(
            attrs("ReplicaSet", "web-abc", Some("zz9")),
            "k8s.replicaset.name=web-abc"
        );
    }

    #[test]
    fn other_controllers() {
        assert_eq!(attrs("StatefulSet", "db", None), "k8s.statefulset.name=db");
        assert_eq!(
            attrs("DaemonSet", "agent", None),
            "k8s.daemonset.name=agent"
        );
        assert_eq!(attrs("Job", "migrate", None), "k8s.job.name=migrate");
        assert_eq!(
            attrs("Job", "report-29123456", None),
            "k8s.job.name=report-29123456,k8s.cronjob.name=report"
        );
        assert_eq!(attrs("Node", "n1", None), "");
        assert_eq!(attrs("ReplicaSet", "", None), "");
    }

    #[test]
    fn the_env_text_round_trips() {
        let a = workload_attributes("ReplicaSet", "shop-7c9d8", Some("7c9d8"));
        let parsed = parse_attributes(&format_attributes(&a));
        let want: Vec<(String, String)> = a.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        assert_eq!(parsed, want);
        assert_eq!(
            parse_attributes(" a=1 ,broken,=x,y=, b=2"),
            vec![
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), "2".to_owned())
            ]
        );
    }
}
