//! Failed logins slow an attacker down: after a few failures each further attempt waits
//! twice as long as the last, up to a lock that only time (or an administrator) lifts.
//! Kept per account and per address by the caller.

/// Failures allowed before waiting starts.
pub const FREE_FAILURES: u32 = 5;
/// The first wait, seconds.
pub const FIRST_WAIT_S: i64 = 30;
/// The longest wait (the lock), seconds.
pub const MAX_WAIT_S: i64 = 3600;

/// The failure count of one account (or one address).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attempts {
    failures: u32,
    /// No attempt is checked before this time (seconds).
    wait_until: i64,
}

/// Why an attempt is not even checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many failed attempts; try again in {retry_after_s} s")]
pub struct LockedOut {
    /// Seconds until the next attempt is checked (the Retry-After).
    pub retry_after_s: i64,
}

impl Attempts {
    /// Whether an attempt may be checked now.
    pub fn check(&self, now: i64) -> Result<(), LockedOut> {
        if now < self.wait_until {
            return Err(LockedOut { retry_after_s: self.wait_until - now });
        }
        Ok(())
    }

    /// A failed attempt at `now`.
    pub fn failed(&mut self, now: i64) {
        self.failures = self.failures.saturating_add(1);
        if self.failures > FREE_FAILURES {
            let doublings = (self.failures - FREE_FAILURES - 1).min(20);
            let wait = (FIRST_WAIT_S << doublings).min(MAX_WAIT_S);
            self.wait_until = now + wait;
        }
    }

    /// A successful attempt: the count starts again.
    pub fn succeeded(&mut self) {
        *self = Attempts::default();
    }

    /// Failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brute_force_meets_growing_waits_up_to_the_lock() {
        let mut a = Attempts::default();
        let mut now = 1_000;
        for _ in 0..FREE_FAILURES {
            assert!(a.check(now).is_ok());
            a.failed(now);
        }
        assert!(a.check(now).is_ok(), "five failures are free");
        a.failed(now);
        assert_eq!(a.check(now), Err(LockedOut { retry_after_s: 30 }));
        let mut waits = Vec::new();
        for _ in 0..10 {
            let wait = a.check(now).unwrap_err().retry_after_s;
            waits.push(wait);
            now += wait;
            assert!(a.check(now).is_ok());
            a.failed(now);
        }
        assert_eq!(&waits[..6], &[30, 60, 120, 240, 480, 960]);
        assert_eq!(*waits.last().unwrap(), MAX_WAIT_S, "capped at the lock");
        a.succeeded();
        assert!(a.check(now).is_ok());
        assert_eq!(a.failures(), 0);
    }
}
