//! Time for the health answers: a monotonic reading (for the timeout rule) and a wall reading
//! (for the JSON body), behind a trait so tests can move time by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of time. `monotonic` never goes backwards and is measured from the clock's own
/// start (node-programmer creates one at start-up, so it plays the role of Go's monotonic
/// reading "m=+…", which counts from process start).
pub trait Clock: Send + Sync + 'static {
    /// Time since this clock started.
    fn monotonic(&self) -> Duration;
    /// Wall-clock time, shown in the `/healthz` body.
    fn wall(&self) -> SystemTime;
}

/// The real clock: `Instant` for monotonic time, `SystemTime` for the wall.
#[derive(Debug, Clone)]
pub struct SystemClock {
    start: Instant,
}

impl SystemClock {
    /// A clock whose monotonic reading starts at zero now.
    pub fn new() -> Self {
        SystemClock {
            start: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn monotonic(&self) -> Duration {
        self.start.elapsed()
    }
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to (tests). Both readings advance together.
#[derive(Debug, Clone)]
pub struct ManualClock {
    wall_start: SystemTime,
    elapsed_ns: Arc<AtomicU64>,
}

impl ManualClock {
    /// Starts at monotonic 0 and wall time `wall_start`.
    pub fn new(wall_start: SystemTime) -> Self {
        ManualClock {
            wall_start,
            elapsed_ns: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Moves both readings forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.elapsed_ns.fetch_add(ns, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn monotonic(&self) -> Duration {
        Duration::from_nanos(self.elapsed_ns.load(Ordering::SeqCst))
    }
    fn wall(&self) -> SystemTime {
        self.wall_start + self.monotonic()
    }
}

/// Formats a time the way Go's `time.Time.String()` does in a UTC process (what kube-proxy
/// prints with `%q` in its `/healthz` body): `2006-01-02 15:04:05.999999999 +0000 UTC`, the
/// fraction without trailing zeros (omitted when zero), then ` m=+<s>.<9 digits>` when the time
/// carries a monotonic reading. `None` is Go's zero `time.Time`: `0001-01-01 00:00:00 +0000 UTC`.
///
/// Times before 1970 are printed as the epoch (they cannot come from a working clock).
pub fn go_time_string(wall: Option<SystemTime>, monotonic: Option<Duration>) -> String {
    let Some(wall) = wall else {
        return "0001-01-01 00:00:00 +0000 UTC".to_string();
    };
    let since_epoch = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let nanos = since_epoch.subsec_nanos();
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let mut out = format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    );
    if nanos != 0 {
        let fraction = format!("{nanos:09}");
        out.push('.');
        out.push_str(fraction.trim_end_matches('0'));
    }
    out.push_str(" +0000 UTC");
    if let Some(m) = monotonic {
        out.push_str(&format!(" m=+{}.{:09}", m.as_secs(), m.subsec_nanos()));
    }
    out
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn formats_like_go_time_string() {
        // date -u -d @1700000000 → 2023-11-14 22:13:20
        assert_eq!(
            go_time_string(Some(at(1_700_000_000, 0)), None),
            "2023-11-14 22:13:20 +0000 UTC"
        );
        assert_eq!(
            go_time_string(Some(at(1_700_000_000, 444_028_700)), None),
            "2023-11-14 22:13:20.4440287 +0000 UTC"
        );
        assert_eq!(
            go_time_string(
                Some(at(1_700_000_000, 5)),
                Some(Duration::new(185, 345_788_401))
            ),
            "2023-11-14 22:13:20.000000005 +0000 UTC m=+185.345788401"
        );
        assert_eq!(
            go_time_string(Some(at(0, 0)), Some(Duration::from_millis(20))),
            "1970-01-01 00:00:00 +0000 UTC m=+0.020000000"
        );
        assert_eq!(go_time_string(None, None), "0001-01-01 00:00:00 +0000 UTC");
    }

    #[test]
    fn calendar_edges() {
        // 2000-02-29 (leap day of a century leap year) and 2100-03-01 (2100 is not leap).
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(47_541), (2100, 3, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(at(1_000, 0));
        assert_eq!(clock.monotonic(), Duration::ZERO);
        clock.advance(Duration::from_secs(3));
        assert_eq!(clock.monotonic(), Duration::from_secs(3));
        assert_eq!(clock.wall(), at(1_003, 0));
    }
}
