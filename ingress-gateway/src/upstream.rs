//! Endpoint state shared across route tables: requests in flight (least-request) and passive
//! health (connect failures → ejection).
//!
//! ```text
//!  config::translate ── EndpointRegistry::state(addr) ──► Arc<EndpointState> in every Backend
//!                        (same Arc for the same address, so state survives table swaps)
//!  proxy: pick ─► InFlight guard (+1 … −1 on drop)
//!         connect failed ─► EndpointState::connect_failed ─► 3 in a row: ejected for 10 s
//!         connected ─────► EndpointState::connected (resets the count)
//! ```
//!
//! Passive health follows nginx's `max_fails` / `fail_timeout` idea (an upstream server that
//! fails `max_fails` times is not chosen for `fail_timeout`), counted on connect failures only:
//! a connect failure is unambiguous, while an HTTP error status is the application's answer.
//! After the ejection the endpoint is chosen again; one more failure ejects it again at once.
//! When every endpoint of a backend is ejected the ejection is ignored (fail open, like Envoy's
//! panic threshold): trying is better than answering 503 without trying.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Consecutive connect failures that eject an endpoint.
pub const EJECT_AFTER_FAILURES: u32 = 3;
/// How long an ejected endpoint is skipped.
pub const EJECTION_TIME: Duration = Duration::from_secs(10);

/// Milliseconds since the first call (monotonic); never 0 (0 means "not ejected").
fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// One endpoint's live counters. Written by the request path, read by endpoint selection.
#[derive(Debug, Default)]
pub struct EndpointState {
    /// Requests currently assigned to this endpoint (all backends together).
    in_flight: AtomicU32,
    /// Connect failures since the last successful connect.
    failures: AtomicU32,
    /// [`now_ms`] until which the endpoint is skipped; 0 = not ejected.
    ejected_until: AtomicU64,
}

impl EndpointState {
    /// Requests in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether the endpoint is ejected now.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    /// Records a failed connect; the [`EJECT_AFTER_FAILURES`]th in a row (and every one after,
    /// until a connect succeeds) ejects the endpoint for [`EJECTION_TIME`]. Returns whether this
    /// call ejected it.
    pub fn connect_failed(&self) -> bool {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= EJECT_AFTER_FAILURES {
            self.ejected_until.store(
                now_ms() + EJECTION_TIME.as_millis() as u64,
                Ordering::Relaxed,
            );
            return true;
        }
        false
    }

    /// Records a successful connect: the failure count and any ejection end.
    pub fn connected(&self) {
        // Plain loads first: the common case writes nothing (no cache-line bouncing).
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.ejected_until.load(Ordering::Relaxed) != 0 {
            self.ejected_until.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// A request assigned to an endpoint; decrements its in-flight count on drop.
#[derive(Debug)]
pub struct InFlight(Arc<EndpointState>);

impl InFlight {
    /// The endpoint's state.
    pub fn state(&self) -> &Arc<EndpointState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One [`EndpointState`] per endpoint address for the life of the process, so counters carry
/// over when a new route table is built. Entries nobody else references are dropped on the next
/// build ([`EndpointRegistry::prune`]).
#[derive(Debug, Default)]
pub struct EndpointRegistry {
    states: Mutex<HashMap<SocketAddr, Arc<EndpointState>>>,
}

impl EndpointRegistry {
    /// The state of `addr` (created on first use).
    pub fn state(&self, addr: SocketAddr) -> Arc<EndpointState> {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.entry(addr).or_default().clone()
    }

    /// Forgets endpoints no route table references any more.
    pub fn prune(&self) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.retain(|_, s| Arc::strong_count(s) > 1);
    }

    /// Number of endpoints known (for tests and logs).
    pub fn len(&self) -> usize {
        self.states.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no endpoint is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A cheap pseudo-random number (splitmix64 over a per-thread counter): endpoint choice needs
/// spread, not unpredictability.
pub fn fast_random() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::{BuildHasher, RandomState};
            RandomState::new().hash_one(std::thread::current().id())
        });
    }
    STATE.with(|s| {
        let mut z = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejected_after_three_failures_until_a_connect_succeeds() {
        let s = Arc::new(EndpointState::default());
        assert!(!s.connect_failed());
        assert!(!s.connect_failed());
        assert!(!s.is_ejected());
        assert!(s.connect_failed());
        assert!(s.is_ejected());
        s.connected();
        assert!(!s.is_ejected());
        assert!(!s.connect_failed(), "count restarted");
    }

    #[test]
    fn in_flight_guard_counts() {
        let s = Arc::new(EndpointState::default());
        let a = s.start();
        let b = s.start();
        assert_eq!(s.in_flight(), 2);
        drop(a);
        assert_eq!(b.state().in_flight(), 1);
        drop(b);
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn registry_shares_and_prunes() {
        let r = EndpointRegistry::default();
        let addr: SocketAddr = "192.0.2.1:80".parse().unwrap();
        let a = r.state(addr);
        assert!(Arc::ptr_eq(&a, &r.state(addr)));
        r.prune();
        assert_eq!(r.len(), 1, "still referenced");
        drop(a);
        r.prune();
        assert!(r.is_empty());
    }
}
