//! A token bucket: how many messages (or bytes) a socket or an address may
//! send, sustained and in a burst. Time is an input.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RateLimiter {
    /// Tokens added per second.
    rate: f64,
    /// Most tokens the bucket holds: the largest burst allowed.
    burst: f64,
    tokens: f64,
    last: Duration,
}

impl RateLimiter {
    /// Allows `rate` messages per second sustained, `burst` at once.
    pub fn new(rate: u32, burst: u32, now: Duration) -> Self {
        Self::with_units(u64::from(rate), u64::from(burst), now)
    }

    /// Allows `rate` units (messages, bytes) per second sustained, `burst`
    /// at once.
    pub fn with_units(rate: u64, burst: u64, now: Duration) -> Self {
        let burst = burst.max(1) as f64;
        Self {
            rate: rate as f64,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn allow(&mut self, now: Duration) -> bool {
        self.allow_n(now, 1)
    }

    /// Takes `n` tokens if there are that many; takes nothing otherwise.
    pub fn allow_n(&mut self, now: Duration, n: u64) -> bool {
        let elapsed = now.saturating_sub(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        let n = n as f64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_burst_then_the_rate() {
        let start = Duration::from_secs(100);
        let mut limiter = RateLimiter::new(10, 5, start);
        let allowed = (0..20).filter(|_| limiter.allow(start)).count();
        assert_eq!(allowed, 5);
        // 0.5 s later: 5 more tokens at 10/s.
        let later = start + Duration::from_millis(500);
        assert_eq!((0..20).filter(|_| limiter.allow(later)).count(), 5);
        // A long pause refills only up to the burst.
        let much_later = later + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| limiter.allow(much_later)).count(), 5);
    }

    #[test]
    fn counts_units_not_calls() {
        let start = Duration::from_secs(1);
        let mut bytes = RateLimiter::with_units(1000, 4000, start);
        assert!(bytes.allow_n(start, 3000));
        assert!(!bytes.allow_n(start, 1500), "only 1000 left");
        assert!(bytes.allow_n(start, 1000));
        assert!(bytes.allow_n(start + Duration::from_secs(2), 2000));
    }

    #[test]
    fn time_going_backwards_grants_nothing() {
        let mut limiter = RateLimiter::new(10, 1, Duration::from_secs(10));
        assert!(limiter.allow(Duration::from_secs(10)));
        assert!(!limiter.allow(Duration::from_secs(5)));
    }
}
