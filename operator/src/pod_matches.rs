//! Which TracedServices each pod matched when it was last seen.
//!
//! The pod watch maps a changed pod to the TracedServices whose selector matches its labels
//! *now*. A pod relabelled out of a selector would then never wake the TracedService it left,
//! whose status would keep counting it until the periodic resync. Remembering the previous
//! matches and returning the union fixes that. Only pods that match something are kept, and
//! entries of pods that no longer exist are pruned whenever the map outgrows the pod cache.

use std::collections::HashMap;
use std::sync::Mutex;

/// Extra entries tolerated over the number of live pods before pruning.
const PRUNE_SLACK: usize = 1024;

/// The last matches per pod (`namespace`, `name`). `R` is the reference type handed to the
/// controller (`ObjectRef<TracedService>` in the operator; anything comparable in tests).
#[derive(Debug)]
pub struct PodMatches<R> {
    last: Mutex<HashMap<(String, String), Vec<R>>>,
}

impl<R> Default for PodMatches<R> {
    fn default() -> Self {
        Self {
            last: Mutex::new(HashMap::new()),
        }
    }
}

impl<R: Clone + PartialEq> PodMatches<R> {
    /// Records what the pod matches now and returns every reference to reconcile: the
    /// current matches plus those it matched before and has left.
    pub fn update(&self, namespace: &str, name: &str, now: Vec<R>) -> Vec<R> {
        let Ok(mut last) = self.last.lock() else {
            return now;
        };
        let key = (namespace.to_owned(), name.to_owned());
        let before = if now.is_empty() {
            last.remove(&key)
        } else {
            last.insert(key, now.clone())
        };
        let mut out = now;
        for r in before.into_iter().flatten() {
            if !out.contains(&r) {
                out.push(r);
            }
        }
        out
    }

    /// Drops entries of pods that no longer exist once the map holds more than `live_pods`
    /// plus some slack (a deleted pod that still matched leaves its entry behind).
    pub fn prune(&self, live_pods: usize, exists: impl Fn(&str, &str) -> bool) {
        if let Ok(mut last) = self.last.lock()
            && last.len() > live_pods + PRUNE_SLACK
        {
            last.retain(|(ns, name), _| exists(ns, name));
        }
    }

    /// Pods remembered.
    pub fn len(&self) -> usize {
        self.last.lock().map(|l| l.len()).unwrap_or(0)
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
    fn prune_forgets_deleted_pods_only_when_the_map_outgrows_the_cache() {
        let m = PodMatches::default();
        for i in 0..(PRUNE_SLACK + 10) {
            m.update("ns", &format!("p{i}"), vec![1]);
        }
        // Only p0..p4 still exist.
        let alive = |_: &str, name: &str| ["p0", "p1", "p2", "p3", "p4"].contains(&name);
        m.prune(PRUNE_SLACK + 10, alive);
        assert_eq!(m.len(), PRUNE_SLACK + 10, "within slack: nothing dropped");
        m.prune(5, alive);
        assert_eq!(m.len(), 5);
    }
}
