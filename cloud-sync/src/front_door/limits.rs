//! Rate limits as token buckets, sans-IO: the caller passes the time. One bucket per key
//! (an address, a user); a request takes one token; tokens come back at a steady rate up to
//! the burst. An empty bucket says how long until the next token: the Retry-After.

use std::collections::HashMap;

/// Buckets share a rate and a burst.
#[derive(Debug)]
pub struct Limiter {
    per_s: f64,
    burst: f64,
    buckets: HashMap<String, (f64, f64)>,
}

/// How many keys are held before full buckets are forgotten.
const PRUNE_AT: usize = 50_000;

impl Limiter {
    /// `per_s` requests a second on average, `burst` at once.
    pub fn new(per_s: f64, burst: u32) -> Limiter {
        Limiter { per_s: per_s.max(1e-6), burst: f64::from(burst.max(1)), buckets: HashMap::new() }
    }

    /// Takes a token for `key` at `now_s`, or says in how many whole seconds one comes back.
    pub fn check(&mut self, key: &str, now_s: f64) -> Result<(), u64> {
        if self.buckets.len() >= PRUNE_AT && !self.buckets.contains_key(key) {
            let (per_s, burst) = (self.per_s, self.burst);
            // A bucket that has refilled is the same as no bucket.
            self.buckets.retain(|_, (tokens, at)| *tokens + (now_s - *at) * per_s < burst);
        }
        let (tokens, at) = self.buckets.entry(key.to_owned()).or_insert((self.burst, now_s));
        let refilled = (*tokens + (now_s - *at).max(0.0) * self.per_s).min(self.burst);
        *at = now_s;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            Ok(())
        } else {
            *tokens = refilled;
            Err(((1.0 - refilled) / self.per_s).ceil().max(1.0) as u64)
        }
    }

    /// Keys held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_requests_wait_for_the_rate() {
        let mut l = Limiter::new(2.0, 5);
        for _ in 0..5 {
            assert!(l.check("10.0.0.1", 0.0).is_ok());
        }
        assert_eq!(l.check("10.0.0.1", 0.0), Err(1));
        // Another key has its own bucket.
        assert!(l.check("10.0.0.2", 0.0).is_ok());
        // Half a second gives one token back at 2 a second.
        assert!(l.check("10.0.0.1", 0.5).is_ok());
        assert!(l.check("10.0.0.1", 0.5).is_err());
        // A slow limit says how long to wait.
        let mut slow = Limiter::new(10.0 / 60.0, 1);
        assert!(slow.check("a", 0.0).is_ok());
        assert_eq!(slow.check("a", 0.0), Err(6));
    }

    #[test]
    fn full_buckets_are_forgotten_when_many_keys_are_held() {
        let mut l = Limiter::new(1.0, 1);
        for i in 0..PRUNE_AT {
            let _ = l.check(&i.to_string(), 0.0);
        }
        assert_eq!(l.len(), PRUNE_AT);
        // Much later every bucket has refilled: all go but the new one.
        assert!(l.check("new", 100.0).is_ok());
        assert_eq!(l.len(), 1);
    }
}
