//! Wall-clock time as a parameter, so expiry logic can be driven by tests.
//!
//! Token files store absolute unix seconds; everything that compares against "now" takes a [`Clock`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where "now" comes from.
pub trait Clock: Send + Sync {
    /// The current time as unix seconds.
    fn now(&self) -> u64;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs()
    }
}

/// A name unique on this host: nanoseconds since the epoch (zero-padded, so names sort by time),
/// the process id and a counter (two names in one nanosecond differ):
/// `000001796119575075553093-20231-0`. Outbox ids and the left part of Message-IDs.
pub fn unique_stamp() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos();
    format!("{nanos:024}-{}-{n}", std::process::id())
}

/// A fixed clock for tests.
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub u64);

impl Clock for FixedClock {
    fn now(&self) -> u64 {
        self.0
    }
}

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z).
const RFC3339_MAX: u64 = 253_402_300_799;

/// Formats unix seconds as RFC 3339 UTC (`2026-11-27T16:22:19Z`). Times past the year 9999 (a
/// token file or a server may say anything) are shown as the last second of 9999.
pub fn rfc3339(unix: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(unix.min(RFC3339_MAX));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Formats a span of seconds for people: `42s`, `5m`, `3h 12m`, `9d 4h`.
pub fn span(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h {m}m"),
        (_, 0, _) => format!("{d}d"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spans round down to the two largest units.
    #[test]
    fn spans() {
        assert_eq!(span(0), "0s");
        assert_eq!(span(59), "59s");
        assert_eq!(span(61), "1m");
        assert_eq!(span(3600), "1h");
        assert_eq!(span(3 * 3600 + 12 * 60 + 5), "3h 12m");
        assert_eq!(span(9 * 86_400 + 4 * 3600 + 7), "9d 4h");
        assert_eq!(span(2 * 86_400 + 30), "2d");
    }

    /// RFC 3339 output is UTC with a `Z`.
    #[test]
    fn rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_796_539), "2026-11-27T16:22:19Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
    }

    proptest::proptest! {
        /// Any time at all formats (token files and servers may say anything).
        #[test]
        fn any_time_formats(t in proptest::num::u64::ANY) {
            proptest::prop_assert!(rfc3339(t).ends_with('Z'));
        }
    }
}
