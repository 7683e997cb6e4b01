//! Which TracedServices each pod matched when it was last seen.
//!
//! The pod watch maps a changed pod to the TracedServices whose selector matches its labels
//! *now*. A pod relabelled out of a selector would then never wake the TracedService it left,
//! whose status would keep counting it until the periodic resync. Remembering the previous
//! matches and returning the union fixes that. Only pods that match something are kept;
//! entries of pods that no longer exist are pruned after enough new entries arrived that the
//! walk costs O(1) per event on average.

use std::collections::HashMap;
use std::sync::Mutex;

/// New entries before a prune is considered (and at least half the map's size).
const PRUNE_AFTER: usize = 1024;

#[derive(Debug)]
struct Inner<R> {
    last: HashMap<(String, String), Vec<R>>,
    new_since_prune: usize,
}

/// The last matches per pod (`namespace`, `name`). `R` is the reference type handed to the
/// controller (`ObjectRef<TracedService>` in the operator; anything comparable in tests).
#[derive(Debug)]
pub struct PodMatches<R> {
    inner: Mutex<Inner<R>>,
}

impl<R> Default for PodMatches<R> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                last: HashMap::new(),
                new_since_prune: 0,
            }),
        }
    }
}

impl<R: Clone + PartialEq> PodMatches<R> {
    /// Records what the pod matches now and returns every reference to reconcile: the
    /// current matches plus those it matched before and has left.
    pub fn update(&self, namespace: &str, name: &str, now: Vec<R>) -> Vec<R> {
        let Ok(mut inner) = self.inner.lock() else {
            return now;
        };
        let key = (namespace.to_owned(), name.to_owned());
        let before = if now.is_empty() {
            inner.last.remove(&key)
        } else {
            let before = inner.last.insert(key, now.clone());
            if before.is_none() {
                inner.new_since_prune += 1;
            }
            before
        };
        let mut out = now;
        for r in before.into_iter().flatten() {
            if !out.contains(&r) {
                out.push(r);
            }
        }
        out
    }

    /// Drops entries of pods that no longer exist (a deleted pod that still matched leaves
    /// its entry behind), once more than [`PRUNE_AFTER`] and half the map's size of new
    /// entries arrived since the last prune; otherwise does nothing.
    pub fn prune(&self, exists: impl Fn(&str, &str) -> bool) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.new_since_prune > PRUNE_AFTER.max(inner.last.len() / 2) {
            inner.last.retain(|(ns, name), _| exists(ns, name));
            inner.new_since_prune = 0;
        }
    }

    /// Pods remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.last.len()).unwrap_or(0)
    }

    /// Whether no pod is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_that_leaves_a_selector_wakes_the_one_it_left() {
        let m = PodMatches::default();
        assert_eq!(m.update("shop", "p1", vec!["service1"]), vec!["service1"]);
        // Relabelled to match service2 only: both must be reconciled.
        assert_eq!(
            m.update("shop", "p1", vec!["service2"]),
            vec!["service2", "service1"]
        );
        // Relabelled to match nothing: service2 still hears about it, then it is forgotten.
        assert_eq!(m.update("shop", "p1", vec![]), vec!["service2"]);
        assert!(m.is_empty());
        assert_eq!(m.update("shop", "p1", vec![]), Vec::<&str>::new());
    }

    #[test]
    fn unchanged_matches_are_not_duplicated_and_pods_are_kept_apart() {
        let m = PodMatches::default();
        m.update("shop", "p1", vec!["a", "b"]);
        m.update("other", "p1", vec!["c"]);
        assert_eq!(m.update("shop", "p1", vec!["b", "a"]), vec!["b", "a"]);
        assert_eq!(m.update("other", "p1", vec!["c"]), vec!["c"]);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn prune_forgets_deleted_pods_only_after_enough_new_entries() {
        let m = PodMatches::default();
        // Only p0..p4 still exist.
        let alive = |_: &str, name: &str| ["p0", "p1", "p2", "p3", "p4"].contains(&name);
        for i in 0..PRUNE_AFTER {
            m.update("ns", &format!("p{i}"), vec![1]);
        }
        // Updates of known pods do not count as new.
        m.update("ns", "p7", vec![2]);
        m.prune(alive);
        assert_eq!(
            m.len(),
            PRUNE_AFTER,
            "not enough new entries: nothing dropped"
        );
        m.update("ns", "one-more", vec![1]);
        m.prune(alive);
        assert_eq!(m.len(), 5);
        // The count restarts: the next prune waits for another batch.
        m.update("ns", "late", vec![1]);
        m.prune(|_, _| false);
        assert_eq!(m.len(), 6);
    }
}
