//! Gives freed heap memory back to the kernel after a connection burst.
//!
//! Every open connection holds a few KiB of buffers (hyper's read buffer, the task, the
//! upstream side). glibc's allocator keeps freed chunks for reuse and only returns the top of
//! the heap, so after 10,000 idle keep-alive connections close the proxy would keep their
//! ~190 MiB for the rest of its life (measured in `bench/`, memory scenario). A sidecar's
//! memory is the pod's memory, so when the open-connection count has fallen well below its
//! recent peak the proxy asks the allocator to release free pages (`malloc_trim(0)`, which also
//! unmaps whole free pages inside the heap). The decision is a plain function; the check runs
//! every few seconds and costs one atomic load when nothing changed.

use std::sync::Arc;
use std::time::Duration;

use crate::state::Shared;

/// How often the connection count is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// A drop of fewer connections than this is not worth a trim (each holds roughly 10-20 KiB).
pub const MIN_DROP: i64 = 256;

/// Decides whether to trim, given the highest open-connection count seen since the last trim
/// and the count now: only after a drop of at least [`MIN_DROP`] connections that took the
/// count to half its peak or less, so a steady or slowly shrinking load never trims.
pub fn should_trim(peak_since_trim: i64, open_now: i64) -> bool {
    peak_since_trim - open_now >= MIN_DROP && open_now * 2 <= peak_since_trim
}

/// Tracks the peak (including bursts between two checks) and calls the allocator when [`should_trim`] says so.
pub async fn watch(shared: Arc<Shared>) {
    let mut peak = 0_i64;
    let mut ticker = tokio::time::interval(CHECK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let open = shared.metrics.open_connections();
        peak = peak.max(shared.metrics.take_peak_open());
        if should_trim(peak, open) {
            let released = trim();
            tracing::debug!(
                peak,
                open,
                released,
                "returned freed heap memory to the kernel"
            );
            peak = open;
        }
    }
}

/// Releases free heap pages; returns whether the allocator released anything.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() -> bool {
    // SAFETY: malloc_trim only walks and shrinks the allocator's own free lists; it is
    // thread-safe and has no preconditions.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators (musl) return memory on their own terms; nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_that_closed_trims() {
        assert!(should_trim(10_000, 0));
        assert!(should_trim(10_000, 5_000));
        assert!(should_trim(MIN_DROP, 0));
    }

    #[test]
    fn steady_or_small_loads_do_not_trim() {
        // No drop at all.
        assert!(!should_trim(10_000, 10_000));
        // Large drop, but still more than half open: a load that is winding down slowly.
        assert!(!should_trim(10_000, 5_001));
        // Halved, but only a handful of connections: not worth walking the heap.
        assert!(!should_trim(100, 0));
        assert!(!should_trim(MIN_DROP - 1, 0));
        assert!(!should_trim(0, 0));
    }

    #[test]
    fn trimming_is_callable_and_harmless() {
        // Allocate and free something sizeable, then trim: must not crash or corrupt the heap.
        let v: Vec<Vec<u8>> = (0..1_000).map(|_| vec![7_u8; 16 * 1024]).collect();
        drop(v);
        let _ = trim();
        let again = vec![1_u8; 1 << 20];
        assert_eq!(again.iter().map(|&b| u64::from(b)).sum::<u64>(), 1 << 20);
    }
}
