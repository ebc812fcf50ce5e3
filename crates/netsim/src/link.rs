//! The link model.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// How a link behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// Probability that a packet is lost (1.0 cuts the link).
    pub loss: f64,
    /// One-way delay.
    pub delay: Duration,
    /// Extra random delay, up to this much (packets overtake each other).
    pub jitter: Duration,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    /// Bits per second; `None` for unlimited.
    pub rate_bps: Option<u64>,
    /// Packets queued beyond this many bytes behind the rate limit are dropped, as a
    /// router's buffer would.
    pub queue_bytes: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            loss: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            duplicate: 0.0,
            rate_bps: None,
            queue_bytes: 256 * 1024,
        }
    }
}

/// What a link did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets offered.
    pub packets_in: u64,
    /// Bytes offered.
    pub bytes_in: u64,
    /// Packets delivered (duplicates included).
    pub packets_out: u64,
    /// Bytes delivered.
    pub bytes_out: u64,
    /// Packets lost (randomly or to a full queue).
    pub dropped: u64,
    /// Packets delivered twice.
    pub duplicated: u64,
}

/// One direction of a link. Sans-IO: the caller supplies the time.
#[derive(Debug)]
pub struct Link {
    config: LinkConfig,
    rng: u64,
    queue: BinaryHeap<Reverse<(Instant, u64, Packet)>>,
    seq: u64,
    /// When the rate-limited "wire" is next free.
    wire_free: Option<Instant>,
    stats: LinkStats,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Packet(Vec<u8>);

impl Link {
    /// A link with `config`, its randomness drawn from `seed`.
    pub fn new(config: LinkConfig, seed: u64) -> Link {
        Link { config, rng: seed | 1, queue: BinaryHeap::new(), seq: 0, wire_free: None, stats: LinkStats::default() }
    }

    /// Changes the link's behaviour from now on (packets already in flight keep theirs).
    pub fn set_config(&mut self, config: LinkConfig) {
        self.config = config;
    }

    /// The current behaviour.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Offers a packet sent at `now`.
    pub fn send(&mut self, now: Instant, packet: Vec<u8>) {
        self.stats.packets_in += 1;
        self.stats.bytes_in += packet.len() as u64;
        if self.chance(self.config.loss) {
            self.stats.dropped += 1;
            return;
        }
        // The rate limit serialises packets onto the wire; a packet that would wait behind
        // more than the queue holds is dropped.
        let mut depart = now;
        if self.config.rate_bps == Some(0) {
            // No capacity at all: the link is down.
            self.stats.dropped += 1;
            return;
        }
        if let Some(bps) = self.config.rate_bps {
            let start = self.wire_free.map_or(now, |f| f.max(now));
            let backlog_bytes = start.saturating_duration_since(now).as_secs_f64() * bps as f64 / 8.0;
            if backlog_bytes > self.config.queue_bytes as f64 {
                self.stats.dropped += 1;
                return;
            }
            let tx = Duration::from_secs_f64(packet.len() as f64 * 8.0 / bps as f64);
            depart = start + tx;
            self.wire_free = Some(depart);
        }
        let jitter = self.jitter();
        let arrive = depart + self.config.delay + jitter;
        if self.chance(self.config.duplicate) {
            self.stats.duplicated += 1;
            let again = arrive + self.jitter();
            self.push(again, packet.clone());
        }
        self.push(arrive, packet);
    }

    /// The next packet that has arrived by `now`.
    pub fn poll_deliver(&mut self, now: Instant) -> Option<Vec<u8>> {
        match self.queue.peek() {
            Some(Reverse((at, _, _))) if *at <= now => {
                let Reverse((_, _, Packet(p))) = self.queue.pop()?;
                self.stats.packets_out += 1;
                self.stats.bytes_out += p.len() as u64;
                Some(p)
            }
            _ => None,
        }
    }

    /// When the next packet arrives, if any is in flight.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((at, _, _))| *at)
    }

    /// What the link has done so far.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    fn push(&mut self, at: Instant, packet: Vec<u8>) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, Packet(packet))));
    }

    fn jitter(&mut self) -> Duration {
        if self.config.jitter.is_zero() {
            return Duration::ZERO;
        }
        self.config.jitter.mul_f64(self.unit())
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// A uniform draw in [0, 1): xorshift64*, enough for shaping traffic.
    fn unit(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(config: LinkConfig, n: usize, size: usize) -> (Link, Vec<(Duration, Vec<u8>)>) {
        let t0 = Instant::now();
        let mut link = Link::new(config, 42);
        for i in 0..n {
            link.send(t0 + Duration::from_millis(i as u64), vec![i as u8; size]);
        }
        let mut out = Vec::new();
        while let Some(at) = link.next_arrival() {
            let p = link.poll_deliver(at).unwrap();
            out.push((at - t0, p));
        }
        (link, out)
    }

    #[test]
    fn loss_and_duplication_follow_their_probabilities() {
        let (link, out) = run(LinkConfig { loss: 0.3, duplicate: 0.1, ..Default::default() }, 10_000, 10);
        let s = link.stats();
        assert!((2700..3300).contains(&s.dropped), "{s:?}");
        assert!((500..900).contains(&s.duplicated), "{s:?}");
        assert_eq!(out.len() as u64, s.packets_out);
        assert_eq!(s.packets_in, 10_000);
    }

    #[test]
    fn delay_and_jitter_delay_and_reorder() {
        let (_, out) = run(
            LinkConfig { delay: Duration::from_millis(100), jitter: Duration::from_millis(20), ..Default::default() },
            200,
            10,
        );
        assert!(out.iter().all(|(at, _)| *at >= Duration::from_millis(100)));
        let order: Vec<u8> = out.iter().map(|(_, p)| p[0]).collect();
        assert!(order.windows(2).any(|w| w[0] > w[1]), "jitter should reorder some packets");
    }

    #[test]
    fn the_rate_limit_paces_delivery_and_a_full_queue_drops() {
        // 1 Mbit/s: 1250-byte packets take 10 ms each on the wire.
        let (link, out) =
            run(LinkConfig { rate_bps: Some(1_000_000), queue_bytes: 1_000_000, ..Default::default() }, 100, 1250);
        let last = out.last().unwrap().0;
        assert!(last >= Duration::from_millis(990) && last <= Duration::from_millis(1010), "{last:?}");
        assert_eq!(link.stats().dropped, 0);
        let (link, _) =
            run(LinkConfig { rate_bps: Some(1_000_000), queue_bytes: 12_500, ..Default::default() }, 100, 1250);
        assert!(link.stats().dropped > 50, "{:?}", link.stats());
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let cfg = LinkConfig { loss: 0.2, jitter: Duration::from_millis(5), duplicate: 0.05, ..Default::default() };
        let (_, a) = run(cfg.clone(), 1000, 20);
        let (_, b) = run(cfg, 1000, 20);
        assert_eq!(a, b);
    }
}
